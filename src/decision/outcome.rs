//! Decisions. A denial is a value, not an error: its [`DenyKind`] alone decides the status,
//! the reason code for logs and metrics and the static body, so every door answers the same.

use http::StatusCode;

use crate::authz::route::RuleId;

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow(Allow),
    /// Refuse it.
    Deny(Deny),
}

/// What an allowed request needs downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    /// The rule that allowed it.
    pub rule: RuleId,
    /// Index of the upstream in the snapshot (proxy door).
    pub upstream: Option<usize>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// The rule that decided, if one matched.
    pub rule: Option<RuleId>,
    /// The closed set of reasons.
    pub kind: DenyKind,
}

/// Every way a request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// No rule matched: default deny.
    NoRule,
    /// A rule with `effect: deny` matched.
    Forbidden,
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

// === impl DenyKind ===

impl DenyKind {
    /// HTTP status of the denial.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRule | Self::Forbidden => StatusCode::FORBIDDEN,
        }
    }

    /// Low-cardinality reason code for logs, metrics and the response body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRule => "no_matching_rule",
            Self::Forbidden => "forbidden",
        }
    }
}
