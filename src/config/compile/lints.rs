//! Lints over the rules as they are compiled: a rule an earlier one always decides first
//! ("can never match"), and a deny rule an earlier allow rule partly decides (a guard that
//! quietly stopped guarding). Candidates are found by the first literal path segment, so the
//! lints cost little as rules grow.

use std::collections::HashMap;

use crate::authz::route::{PathPattern, Rule};
use crate::config::diagnostic::Diagnostic;
use crate::config::raw::Effect;

/// Rules seen so far, bucketed by their first literal segment.
#[derive(Debug, Default)]
pub(super) struct Linter {
    buckets: HashMap<String, Vec<usize>>,
    /// Rules with a path without a literal first segment (or no paths): candidates for all.
    any: Vec<usize>,
}

impl Linter {
    /// Warnings about `rule` given the earlier `rules`.
    pub(super) fn check(
        &self,
        rule: &Rule,
        rules: &[Rule],
        at: impl Fn(&str, String) -> Diagnostic,
    ) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        // An earlier rule matching everything this one could means it never decides.
        let first = rule.paths.first().and_then(PathPattern::first_literal);
        let bucket = first.as_ref().and_then(|f| self.buckets.get(f));
        let shadow = self
            .any
            .iter()
            .chain(bucket.into_iter().flatten())
            .copied()
            .filter(|&a| rules.get(a).is_some_and(|e| rule.shadowed_by(e)))
            .min();
        if let Some(a) = shadow.and_then(|a| rules.get(a)) {
            out.push(
                at(
                    "match",
                    format!(
                        "rule `{}` can never match: `{}` ({}) comes first and matches every request it would",
                        rule.id.0, a.id.0, a.file
                    ),
                )
                .warning(),
            );
        }
        if shadow.is_none() && rule.effect == Effect::Deny {
            // Candidates share the first literal segment of one of the deny rule's paths, or
            // have none; a path without one can meet any earlier rule.
            let firsts: Option<Vec<String>> =
                rule.paths.iter().map(PathPattern::first_literal).collect();
            let overlap = if let Some(firsts) = firsts.filter(|f| !f.is_empty()) {
                self.any
                    .iter()
                    .chain(firsts.iter().filter_map(|f| self.buckets.get(f)).flatten())
                    .copied()
                    .filter(|&a| {
                        rules
                            .get(a)
                            .is_some_and(|e| e.effect == Effect::Allow && rule.overlaps(e))
                    })
                    .min()
            } else {
                rules
                    .iter()
                    .position(|e| e.effect == Effect::Allow && rule.overlaps(e))
            };
            if let Some(a) = overlap.and_then(|a| rules.get(a)) {
                out.push(
                    at(
                        "match",
                        format!(
                            "deny rule `{}` does not refuse everything it matches: `{}` ({}) comes first and allows some of those requests",
                            rule.id.0, a.id.0, a.file
                        ),
                    )
                    .warning(),
                );
            }
        }
        out
    }

    /// Remembers the rule at `index`.
    pub(super) fn add(&mut self, index: usize, rule: &Rule) {
        if rule.paths.is_empty() {
            self.any.push(index);
        }
        for p in &rule.paths {
            match p.first_literal() {
                Some(f) => self.buckets.entry(f).or_default().push(index),
                None => self.any.push(index),
            }
        }
    }
}
