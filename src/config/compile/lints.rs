//! Lints over the rules as they are compiled: a rule an earlier one always decides first
//! ("can never match"), and a deny rule an earlier allow rule partly decides (a guard that
//! quietly stopped guarding). Candidates are found in a tree of the rules' literal path
//! prefixes, so the lints cost little as rules grow.
//!
//! Why a tree: rules were bucketed by their first literal segment only, so thousands of
//! rules under one prefix (`/api/...`) were each compared with every earlier one, and a file
//! of 8,000 took seconds to check and to reload. Regression: bench/policy.rs `config_compile`

use std::collections::HashMap;

use crate::authz::route::Rule;
use crate::config::diagnostic::Diagnostic;
use crate::config::raw::Effect;

/// Rules seen so far, each at the end of the literal prefix of each of its paths (a rule
/// without paths, or a path starting with a wildcard, at the root).
#[derive(Debug, Default)]
pub(super) struct Linter {
    root: Node,
}

/// One literal segment of the prefix tree.
#[derive(Debug, Default)]
struct Node {
    /// Rules with a path whose literal prefix ends here.
    here: Vec<usize>,
    children: HashMap<String, Self>,
}

impl Node {
    /// The rules along `prefix` from here (whose prefix is a prefix of it), and the node it
    /// ends at, if the tree goes that far.
    fn along(&self, prefix: impl Iterator<Item = String>) -> (Vec<usize>, Option<&Self>) {
        let mut found = self.here.clone();
        let mut node = self;
        for seg in prefix {
            match node.children.get(&seg) {
                Some(next) => {
                    node = next;
                    found.extend_from_slice(&node.here);
                }
                None => return (found, None),
            }
        }
        (found, Some(node))
    }

    /// Every rule below this node, this one's excluded.
    fn below(&self, out: &mut Vec<usize>) {
        for child in self.children.values() {
            out.extend_from_slice(&child.here);
            child.below(out);
        }
    }
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
        // An earlier rule matching everything this one could means it never decides: its
        // literal prefix is a prefix of this rule's (of its first path, which it must cover).
        // (And where its last segment, read without a format suffix, leads: an earlier rule
        // that reads suffixes matches it there.)
        let candidates = match rule.paths.first() {
            Some(p) => {
                let mut found = self.root.along(p.literal_prefix()).0;
                for stem in p.format_stems_of_prefix() {
                    found.extend(self.root.along(stem.into_iter()).0);
                }
                found
            }
            None => self.root.here.clone(),
        };
        let shadow = candidates
            .into_iter()
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
            // Candidates: along each path's literal prefix (an earlier prefix of it), and
            // below it (an earlier rule it is a prefix of); without paths, every rule.
            let mut candidates = Vec::new();
            if rule.paths.is_empty() {
                candidates.extend_from_slice(&self.root.here);
                self.root.below(&mut candidates);
            }
            for p in &rule.paths {
                let (along, end) = self.root.along(p.literal_prefix());
                candidates.extend(along);
                if let Some(end) = end {
                    end.below(&mut candidates);
                }
            }
            let overlap = candidates
                .into_iter()
                .filter(|&a| {
                    rules
                        .get(a)
                        .is_some_and(|e| e.effect == Effect::Allow && rule.overlaps(e))
                })
                .min();
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
            self.root.here.push(index);
        }
        for p in &rule.paths {
            let mut node = &mut self.root;
            for seg in p.literal_prefix() {
                node = node.children.entry(seg).or_default();
            }
            node.here.push(index);
        }
    }
}
