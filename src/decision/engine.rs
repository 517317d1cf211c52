//! `decide`: authenticate → authorize → rate limit. The same code serves every door and
//! `portcullis explain`, which passes a recording [`Trace`] instead of [`NoTrace`].

use crate::authz::route::RuleId;
use crate::config::raw::Effect;
use crate::request::RequestFacts;
use crate::snapshot::Snapshot;

use super::outcome::{Allow, Decision, Deny, DenyKind};

/// One step of a decision, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// The rule that matched.
    RuleMatched(RuleId),
    /// No rule matched.
    NoRuleMatched,
}

/// Receives the steps of a decision.
pub trait Trace {
    /// Records one step.
    fn record(&mut self, event: TraceEvent);
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
}

/// Decides one request against one snapshot. Default deny: a request no rule matches is refused.
pub async fn decide(
    snapshot: &Snapshot,
    facts: &RequestFacts<'_>,
    trace: &mut impl Trace,
) -> Decision {
    let Some(rule) = snapshot.routes.find(facts) else {
        trace.record(TraceEvent::NoRuleMatched);
        return Decision::Deny(Deny {
            rule: None,
            kind: DenyKind::NoRule,
        });
    };
    trace.record(TraceEvent::RuleMatched(rule.id.clone()));
    match rule.effect {
        Effect::Allow => Decision::Allow(Allow {
            rule: rule.id.clone(),
            upstream: rule.upstream,
        }),
        Effect::Deny => Decision::Deny(Deny {
            rule: Some(rule.id.clone()),
            kind: DenyKind::Forbidden,
        }),
    }
}
