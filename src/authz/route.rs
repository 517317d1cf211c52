//! Route rules compiled from the policy files: host, path and method matching.
//!
//! Matching is on the canonical path (see [`crate::request::path`]), so every spelling of a
//! path that an upstream would treat as the same resolves to one string before any rule sees
//! it. Rules are evaluated in order (files by name, rules in file order); the first match
//! decides; no match is a denial.

use std::sync::Arc;

use http::Method;

use crate::config::raw::Effect;
use crate::request::RequestFacts;

/// A rule's unique name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleId(pub Arc<str>);

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Unique name.
    pub id: RuleId,
    /// The policy file it came from.
    pub file: Arc<str>,
    /// Hosts it applies to; empty = any.
    pub hosts: Vec<HostPattern>,
    /// Paths it applies to; empty = any.
    pub paths: Vec<PathPattern>,
    /// Methods it applies to.
    pub methods: MethodSet,
    /// Envoy `context_extensions` a Check must carry, with these values; empty = none asked.
    pub context: Box<[(Box<str>, Box<str>)]>,
    /// Allow or deny.
    pub effect: Effect,
    /// Index into the snapshot's upstreams.
    pub upstream: Option<usize>,
    /// Indexes of the authenticators it accepts, in order.
    pub authenticators: Box<[usize]>,
    /// Whether requests without any credential pass as anonymous.
    pub anonymous: bool,
    /// Query parameters any of its authenticators reads credentials from: always removed
    /// before forwarding (URLs end up in logs).
    pub query_credentials: Option<Arc<[Box<str>]>>,
    /// What an allowed request must also satisfy.
    pub require: super::require::Requirements,
    /// Identity headers set on allowed requests (global ones merged with the rule's).
    pub identity: super::identity::IdentityHeaders,
    /// The `when` condition.
    pub when: Option<super::expr::Condition>,
    /// What its denials look like, when it says.
    pub denial: Option<Arc<super::denial::Denial>>,
    /// The rate limit on the requests it allows.
    pub rate_limit: Option<Arc<crate::ratelimit::Limit>>,
    /// The brute-force guard: spent by refusals, checked before authentication.
    pub guard: Option<Arc<crate::ratelimit::Limit>>,
    /// The delegate asked before the rule allows.
    pub delegate: Option<Arc<super::delegate::Delegate>>,
    /// An allow rule whose path literals match in any ASCII case (its policy file or its
    /// upstream says `case_insensitive_paths`); deny rules always do.
    pub case_insensitive: bool,
    /// Upstream timeouts overriding the upstream's, for the requests it allows.
    pub timeouts: Option<Arc<RouteTimeouts>>,
    /// Its upgrades, tunnel re-checks and CORS, when it has any.
    pub edge: Option<Arc<super::edge::Edge>>,
}

/// A rule's upstream timeouts; `None` keeps the upstream's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// Connecting (TCP and TLS).
    pub connect: Option<std::time::Duration>,
    /// Sending the request to the response head.
    pub response: Option<std::time::Duration>,
    /// Between two pieces of the response body.
    pub idle: Option<std::time::Duration>,
}

/// The ordered rules, and an index that finds the first match without trying every rule.
#[derive(Debug, Default)]
pub struct RouteTable {
    rules: Vec<Rule>,
    /// A trie over the literal leading segments of the path patterns (ASCII-lowercased): each
    /// node lists, in rule order, the rules whose literal prefix ends there. The rules that
    /// can match a path are those listed on the nodes along its segments.
    index: Node,
}

#[derive(Debug, Default)]
struct Node {
    children: std::collections::HashMap<Box<str>, Self>,
    rules: Vec<u32>,
}

/// Deepest trie level: longer literal prefixes are indexed by their first segments only.
const MAX_DEPTH: usize = 12;

/// Format suffixes a last segment is read without (at its first dots): `a.b.c` as `a` and
/// `a.b`.
const MAX_SUFFIXES: usize = 4;

/// A host criterion: exact or wildcard, never with a port.
///
/// Why no port: the port in `Host` (or `:authority`) is the client's to write, and upstreams
/// route on the name alone, so `admin.example:8443` as a deny rule was passed by writing
/// `Host: admin.example`, and as an allow rule was reached from any listener by writing the
/// port: a port in a pattern never restricted anything. Regression: tests::host_patterns
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    kind: HostKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostKind {
    Any,
    Exact(Box<str>),
    /// `*.example.com` stored as `.example.com`.
    Wildcard(Box<str>),
}

/// A path criterion over canonical paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Box<[Segment]>,
    /// Ends in `/**`: matches the prefix itself and anything below it.
    prefix: bool,
}

impl PathPattern {
    /// The names its `{name}` segments bind.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Any(Some(name)) => Some(&**name),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*` or `{name}`: exactly one non-empty segment.
    Any(Option<Box<str>>),
}

/// A set of methods; empty means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MethodSet(Box<[Method]>);

/// Why a pattern in a policy file is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Paths are absolute.
    #[error("path pattern must start with `/`")]
    NotAbsolute,
    /// `**` is only a suffix.
    #[error("`**` is only allowed as the last segment (`/prefix/**`)")]
    InnerDoubleStar,
    /// Patterns are written in canonical form.
    #[error(
        "path pattern is not canonical (no `//`, `.`, `..`, `;`, `\\`, nor an escape of a character a path may carry as it is: `a` not `%61`, `:` not `%3A`)"
    )]
    NotCanonical,
    /// `{name}` must be a whole segment.
    #[error("`{{name}}` parameters must be a whole segment with a non-empty name")]
    BadParameter,
    /// A `{name}` bound twice: only one value could be read.
    #[error(
        "parameter `{{{0}}}` is named twice: each `{{name}}` binds one segment, so name them apart"
    )]
    RepeatedParameter(Box<str>),
    /// Host names.
    #[error("invalid host pattern")]
    BadHost,
    /// A port in a host pattern: the client writes it.
    #[error(
        "a host pattern cannot name a port: the port in `Host` is the client's to write and upstreams ignore it; match the name alone"
    )]
    HostPort,
    /// Methods are tokens.
    #[error("invalid method")]
    BadMethod,
    /// Methods are case-sensitive and written in upper case.
    #[error("methods are written in upper case (`GET`, `POST`)")]
    LowercaseMethod,
}

// === impl RouteTable ===

impl RouteTable {
    /// Wraps rules already in evaluation order.
    pub fn new(rules: Vec<Rule>) -> Self {
        let mut index = Node::default();
        for (i, rule) in rules.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            if rule.paths.is_empty() {
                index.rules.push(i);
                continue;
            }
            for p in &rule.paths {
                let mut node = &mut index;
                let mut key = String::new();
                for seg in p.segments.iter().take(MAX_DEPTH) {
                    let Segment::Literal(l) = seg else { break };
                    node = node
                        .children
                        .entry(index_key(l, &mut key).into())
                        .or_default();
                }
                // One pattern per rule per node is enough.
                if node.rules.last() != Some(&i) {
                    node.rules.push(i);
                }
            }
        }
        Self { rules, index }
    }

    /// The first rule matching the request, if any: the candidates along the path's segments
    /// are merged in rule order and checked in full, so the answer is the same as trying every
    /// rule in order, at a cost that depends on the path, not on how many rules there are.
    pub fn find(&self, facts: &RequestFacts<'_>) -> Option<&Rule> {
        // Candidate lists along the path, root first, then those of the last segment read
        // without a format suffix (on the stack: no allocation).
        let mut lists: [&[u32]; MAX_DEPTH + 1 + MAX_SUFFIXES] = [&[]; MAX_DEPTH + 1 + MAX_SUFFIXES];
        let mut n = 0;
        let mut node = &self.index;
        lists[0] = &node.rules;
        n += 1;
        let mut lower = String::new();
        let path = facts.path.strip_prefix('/').unwrap_or(&facts.path);
        // Why: a deny rule matches its last segment with a format suffix (`/secret.json`,
        // see `PathPattern::matches_fold`), but its rule is filed under `secret`, which the
        // walk never reached from `secret.json`: the suffix fix matched nothing.
        // Regression: tests::a_format_suffix_reaches_the_deny_rule_through_the_index
        let last = path.strip_suffix('/').unwrap_or(path);
        let (before, last_seg) = last
            .rsplit_once('/')
            .map_or((None, last), |(b, s)| (Some(b), s));
        // Its depth counted only when it has a dot (most paths have none): no lookup else.
        let last_depth = match (last_seg.contains('.'), before) {
            (false, _) => usize::MAX,
            (true, None) => 0,
            (true, Some(b)) => b.split('/').count(),
        };
        let mut buf = String::new();
        for (depth, seg) in path.split('/').take(MAX_DEPTH).enumerate() {
            if depth == last_depth {
                for (i, _) in last_seg.match_indices('.').take(MAX_SUFFIXES) {
                    if i > 0
                        && let Some(found) = node.children.get(index_key(&last_seg[..i], &mut buf))
                    {
                        lists[n] = &found.rules;
                        n += 1;
                    }
                }
            }
            let key = index_key(seg, &mut lower);
            let Some(next) = node.children.get(key) else {
                break;
            };
            node = next;
            lists[n] = &node.rules;
            n += 1;
        }
        // k-way merge by rule index.
        let mut pos = [0usize; MAX_DEPTH + 1 + MAX_SUFFIXES];
        loop {
            let mut best: Option<(usize, u32)> = None;
            for (k, list) in lists[..n].iter().enumerate() {
                if let Some(&i) = list.get(pos[k])
                    && best.is_none_or(|(_, b)| i < b)
                {
                    best = Some((k, i));
                }
            }
            let (k, i) = best?;
            pos[k] += 1;
            if let Some(rule) = self.rules.get(i as usize)
                && rule.matches(facts)
            {
                return Some(rule);
            }
        }
    }

    /// Every rule in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

// === impl Rule ===

impl Rule {
    /// Whether every criterion of the rule holds for the request.
    pub fn matches(&self, facts: &RequestFacts<'_>) -> bool {
        self.methods.contains(facts.method)
            && (self.context.is_empty() || {
                // Only the gRPC door's Checks carry them; a rule asking for one never matches
                // a request without. Regression: tests::context_extensions_narrow_a_rule
                facts.context.is_some_and(|c| {
                    self.context
                        .iter()
                        .all(|(k, v)| c.iter().any(|(n, got)| *n == &**k && *got == &**v))
                })
            })
            && (self.hosts.is_empty() || {
                // Why: `*.internal.example` read as one label let a deny rule be passed by
                // `a.b.internal.example`, which the same upstream serves; a deny rule takes the
                // wider reading, as it does for path case. Regression: tests::deny_rules_take_the_wide_reading_of_a_host_wildcard
                let any_depth = self.effect == Effect::Deny;
                self.hosts
                    .iter()
                    .any(|h| h.matches_at_depth(&facts.host, any_depth))
            })
            && (self.paths.is_empty() || {
                // Why: upstreams disagree on path case (Express, IIS and ASP.NET ignore it), so a
                // deny rule catches every case variant while an allow rule grants only the exact
                // spelling: each direction takes the safe reading.
                // Regression: tests::deny_rules_ignore_path_case
                // An allow rule for an upstream that ignores case folds too, or `/ADMIN/x`
                // would pass its requirements by to a catch-all rule.
                // Regression: tests::case_insensitive_allow_rules
                // A deny rule also reads the letters Java, Go and others fold to ASCII
                // (`/%C5%BFecrets` is `/secrets` to `equalsIgnoreCase`).
                let fold = self.fold();
                self.paths.iter().any(|p| p.matches_fold(&facts.path, fold))
            })
    }
}

impl Rule {
    /// Whether its path literals match in any ASCII case.
    pub fn folds_case(&self) -> bool {
        self.effect == Effect::Deny || self.case_insensitive
    }

    /// How its path literals compare with a request's: widely where case folds (deny rules,
    /// and allow rules for an upstream that ignores case: see [`Self::matches_only_widely`]).
    pub fn fold(&self) -> Fold {
        if self.folds_case() {
            Fold::Wide
        } else {
            Fold::None
        }
    }

    /// Whether this allow rule matches `path` only by folding a letter that is not ASCII
    /// ([`wide_key`]): such a request is refused rather than allowed or passed on.
    ///
    /// Why: an allow rule for an upstream that ignores case matched in ASCII case only, so
    /// `/adm%C4%B1n/x` (`admın`) missed its `/admin/**` and slipped to a catch-all, while an
    /// upstream folding as Java's `equalsIgnoreCase` serves it from the admin handler. Matching
    /// it widely would grant what the rule grants to a name an upstream folding ASCII alone
    /// reads as another; neither reading is safe, so the request is refused.
    /// Regression: tests::case_insensitive_allow_rules_refuse_what_only_folds_widely
    pub fn matches_only_widely(&self, path: &str) -> bool {
        self.effect == Effect::Allow
            && self.case_insensitive
            && !self.paths.is_empty()
            && !self.paths.iter().any(|p| p.matches_fold(path, Fold::Ascii))
    }

    /// Whether every request this rule could match is matched by `earlier` first, so this
    /// rule never decides (lint). Conservative: `true` only when it is certain.
    pub fn shadowed_by(&self, earlier: &Self) -> bool {
        // A wildcard reads wider in a deny rule: the same pattern in an earlier allow rule
        // does not cover it. Regression: tests::lints_read_a_deny_wildcard_at_any_depth
        let (deep, earlier_deep) = (self.effect == Effect::Deny, earlier.effect == Effect::Deny);
        // Why a wildcard covers: `*.example.org` before `x.example.org` decides every request
        // the later rule matches, and `check` said nothing. Regression:
        // tests::a_wildcard_host_or_a_format_suffix_shadows_a_later_rule
        let hosts = earlier.hosts.is_empty()
            || (!self.hosts.is_empty()
                && self.hosts.iter().all(|h| {
                    earlier
                        .hosts
                        .iter()
                        .any(|e| e.covers_at_depth(earlier_deep, h, deep))
                }));
        // (An empty set leaves out the methods only a rule naming them matches: a later rule
        // naming TRACE decides it. Regression: tests::an_empty_method_set_covers_no_trace)
        let methods = if earlier.methods.0.is_empty() {
            self.methods.0.iter().all(|m| !is_explicit_only(m))
        } else {
            !self.methods.0.is_empty()
                && self.methods.0.iter().all(|m| earlier.methods.0.contains(m))
        };
        let fold = earlier.folds_case();
        // (Every rule that folds folds as widely: [`Self::fold`].)
        // Why: a rule whose literals fold (a deny rule) matches `/REPORTS` where an earlier
        // exact `/reports` does not: `check` called such a deny rule dead, and an operator
        // deleting it lost that denial. Regression: tests::a_folding_rule_is_not_shadowed_by_an_exact_one
        let wider = self.folds_case() && !fold;
        let paths = earlier.paths.is_empty()
            || (!self.paths.is_empty()
                && self.paths.iter().all(|b| {
                    earlier
                        .paths
                        .iter()
                        .any(|a| a.covers(b, fold) && !(wider && a.has_literal()))
                }));
        // Every context value `earlier` asks for, this rule asks for too.
        let context = earlier
            .context
            .iter()
            .all(|pair| self.context.contains(pair));
        hosts && methods && paths && context
    }

    /// Whether some request could match both this rule and `other` (lint: an earlier allow
    /// rule deciding part of what a later deny rule matches). Literal segments are compared
    /// case-insensitively when either rule is a deny rule, as deny rules match.
    pub fn overlaps(&self, other: &Self) -> bool {
        let (deep, other_deep) = (self.effect == Effect::Deny, other.effect == Effect::Deny);
        let hosts = self.hosts.is_empty()
            || other.hosts.is_empty()
            || self.hosts.iter().any(|a| {
                other
                    .hosts
                    .iter()
                    .any(|b| a.intersects_at_depth(deep, b, other_deep))
            });
        let methods = self.methods.0.is_empty()
            || other.methods.0.is_empty()
            || self.methods.0.iter().any(|m| other.methods.0.contains(m));
        let fold = self.folds_case() || other.folds_case();
        let paths = self.paths.is_empty()
            || other.paths.is_empty()
            || self
                .paths
                .iter()
                .any(|a| other.paths.iter().any(|b| a.intersects(b, fold)));
        // No name asked with two different values.
        let context = self
            .context
            .iter()
            .all(|(k, v)| other.context.iter().all(|(ok, ov)| ok != k || ov == v));
        hosts && methods && paths && context
    }

    /// Named parameters of the first path pattern matching `path` (empty without patterns).
    pub fn params(&self, path: &str) -> Vec<(Box<str>, String)> {
        self.paths
            .iter()
            .find(|p| p.matches_fold(path, self.fold()))
            .map(|p| p.captures(path))
            .unwrap_or_default()
    }
}

/// Whether `h` is a bare DNS name: dot-separated non-empty labels of letters, digits and `-`
/// (no port, scheme, wildcard or trailing dot).
pub fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

// === impl HostPattern ===

impl HostPattern {
    /// Parses `example.com`, `*.example.com` or `*`; a port is refused ([`PatternError::HostPort`]).
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let s = s.trim().to_ascii_lowercase();
        if let Some((_, p)) = s.rsplit_once(':') {
            return Err(if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                PatternError::HostPort
            } else {
                PatternError::BadHost
            });
        }
        let host = s.strip_suffix('.').unwrap_or(&s);
        let kind = if host == "*" {
            HostKind::Any
        } else if let Some(rest) = host.strip_prefix("*.") {
            if !is_host_name(rest) {
                return Err(PatternError::BadHost);
            }
            HostKind::Wildcard(format!(".{rest}").into())
        } else if is_host_name(host) {
            HostKind::Exact(host.into())
        } else {
            return Err(PatternError::BadHost);
        };
        Ok(Self { kind })
    }

    /// Whether some host matches both patterns (one-label wildcards, the narrower reading).
    pub fn intersects(&self, other: &Self) -> bool {
        self.intersects_at_depth(false, other, false)
    }

    /// Whether some host matches both patterns, each wildcard read at any depth when its flag
    /// says so (a deny rule's, [`Self::matches_at_depth`]).
    pub fn intersects_at_depth(&self, deep: bool, other: &Self, other_deep: bool) -> bool {
        match (&self.kind, &other.kind) {
            (HostKind::Any, _) | (_, HostKind::Any) => true,
            (HostKind::Exact(a), HostKind::Exact(b)) => a == b,
            (HostKind::Exact(h), HostKind::Wildcard(_)) => other.matches_at_depth(h, other_deep),
            (HostKind::Wildcard(_), HostKind::Exact(h)) => self.matches_at_depth(h, deep),
            // `x.a` (one label before suffix `a`) meets a deeper reading of suffix `b` when `a`
            // ends with `b`; two one-label readings only when the suffixes are equal.
            (HostKind::Wildcard(a), HostKind::Wildcard(b)) => {
                a == b || (other_deep && a.ends_with(&**b)) || (deep && b.ends_with(&**a))
            }
        }
    }

    /// Whether every host `later` matches (a wildcard at any depth when `later_deep`) this
    /// matches too (likewise with `deep`). Conservative: `true` only when it is certain.
    pub fn covers_at_depth(&self, deep: bool, later: &Self, later_deep: bool) -> bool {
        match (&self.kind, &later.kind) {
            (HostKind::Any, _) => true,
            (_, HostKind::Any) => false,
            (HostKind::Exact(a), HostKind::Exact(b)) => a == b,
            (HostKind::Exact(_), HostKind::Wildcard(_)) => false,
            (HostKind::Wildcard(_), HostKind::Exact(h)) => self.matches_at_depth(h, deep),
            // `x.b` for suffix `b`: one label before `a` when `b` is `a`; more when `b` is
            // longer, which only a deep reading of `a` takes.
            (HostKind::Wildcard(a), HostKind::Wildcard(b)) => {
                (a == b && (deep || !later_deep))
                    || (deep && b.len() > a.len() && b.ends_with(&**a))
            }
        }
    }

    /// `host` is already lowercase without a trailing dot (see [`RequestFacts`]). A wildcard
    /// stands for exactly one label.
    pub fn matches(&self, host: &str) -> bool {
        self.matches_at_depth(host, false)
    }

    /// As [`Self::matches`]; with `any_depth`, a wildcard stands for one label or more.
    pub fn matches_at_depth(&self, host: &str, any_depth: bool) -> bool {
        match &self.kind {
            HostKind::Any => true,
            HostKind::Exact(h) => **h == *host,
            HostKind::Wildcard(suffix) => host
                .strip_suffix(&**suffix)
                .is_some_and(|label| !label.is_empty() && (any_depth || !label.contains('.'))),
        }
    }
}

// === impl PathPattern ===

impl PathPattern {
    /// Parses `/exact`, `/prefix/**`, `/a/*/b`, `/users/{id}`.
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        let rest = s.strip_prefix('/').ok_or(PatternError::NotAbsolute)?;
        let (rest, prefix) = match rest.strip_suffix("**") {
            Some(r) if r.is_empty() || r.ends_with('/') => (r.trim_end_matches('/'), true),
            _ => (rest, false),
        };
        let mut segments: Vec<Segment> = Vec::new();
        if !rest.is_empty() {
            for seg in rest.split('/') {
                let seg = parse_segment(seg)?;
                // Why: `/t/{id}/u/{id}` bound `params.id` to the last segment only, so a
                // condition `params.id == principal.id` let `/t/bob/u/alice` through for alice.
                // Regression: tests::a_parameter_named_twice_is_refused
                if let Segment::Any(Some(name)) = &seg
                    && segments
                        .iter()
                        .any(|s| matches!(s, Segment::Any(Some(n)) if n == name))
                {
                    return Err(PatternError::RepeatedParameter(name.clone()));
                }
                segments.push(seg);
            }
        }
        Ok(Self {
            segments: segments.into(),
            prefix,
        })
    }

    /// Whether the canonical `path` matches. An exact pattern takes one trailing slash (`/a`
    /// matches `/a/`, as many frameworks serve it); `/a/**` matches `/a` and `/a/` too.
    pub fn matches(&self, path: &str) -> bool {
        self.matches_case(path, false)
    }

    /// Whether some segment is a literal.
    pub fn has_literal(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Literal(_)))
    }

    /// The literal segments before the first wildcard, ASCII-lowercased (lint bucketing: a
    /// pattern covering or meeting this one has literals that agree with these as far as
    /// both go, as [`Self::covers`] and [`Self::intersects`] compare them).
    pub fn literal_prefix(&self) -> impl Iterator<Item = String> + '_ {
        self.segments.iter().map_while(|s| match s {
            Segment::Literal(l) => Some(l.to_ascii_lowercase()),
            Segment::Any(_) => None,
        })
    }

    /// Whether every path `other` matches, this matches too (literals compared
    /// case-insensitively when `fold_case`).
    pub fn covers(&self, other: &Self, fold_case: bool) -> bool {
        if !self.prefix {
            if other.prefix || other.segments.len() != self.segments.len() {
                return false;
            }
        } else if other.segments.len() < self.segments.len() {
            return false;
        }
        // A rule whose case folds reads a format suffix on the path's last segment
        // ([`Self::matches_fold`]): `/secret` matches all that an exact `/secret.json` does.
        let last = (!other.prefix).then(|| other.segments.len().saturating_sub(1));
        self.segments
            .iter()
            .zip(other.segments.iter())
            .enumerate()
            .all(|(k, (a, b))| match (a, b) {
                (Segment::Any(_), _) => true,
                (Segment::Literal(x), Segment::Literal(y)) => {
                    x == y
                        || (fold_case
                            && (x.eq_ignore_ascii_case(y)
                                || (last == Some(k)
                                    && format_stems(y).any(|stem| x.eq_ignore_ascii_case(stem)))))
                }
                (Segment::Literal(_), Segment::Any(_)) => false,
            })
    }

    /// The literal prefix of an exact pattern of literals only, its last segment without each
    /// format suffix it could be read with (`/a/b.c.d`: `[a, b]` and `[a, b.c]`), for the
    /// lints to find the earlier rules that read it so.
    pub fn format_stems_of_prefix(&self) -> Vec<Vec<String>> {
        let Some((Segment::Literal(last), rest)) = self.segments.split_last() else {
            return Vec::new();
        };
        if self.prefix || rest.iter().any(|s| matches!(s, Segment::Any(_))) {
            return Vec::new();
        }
        format_stems(last)
            .map(|stem| {
                self.literal_prefix()
                    .take(rest.len())
                    .chain(std::iter::once(stem.to_ascii_lowercase()))
                    .collect()
            })
            .collect()
    }

    /// Whether some path matches both patterns (literals compared case-insensitively when
    /// `fold_case`).
    pub fn intersects(&self, other: &Self, fold_case: bool) -> bool {
        let (a, b) = (self.segments.len(), other.segments.len());
        let lengths = match (self.prefix, other.prefix) {
            (false, false) => a == b,
            (true, false) => b >= a,
            (false, true) => a >= b,
            (true, true) => true,
        };
        lengths
            && self
                .segments
                .iter()
                .zip(other.segments.iter())
                .all(|pair| match pair {
                    (Segment::Literal(x), Segment::Literal(y)) => {
                        x == y || (fold_case && x.eq_ignore_ascii_case(y))
                    }
                    _ => true,
                })
    }

    /// The `{name}` segments of a path this pattern matches, with their values.
    pub fn captures(&self, path: &str) -> Vec<(Box<str>, String)> {
        let segs = path.strip_prefix('/').unwrap_or(path).split('/');
        self.segments
            .iter()
            .zip(segs)
            .filter_map(|(pat, seg)| match pat {
                Segment::Any(Some(name)) => Some((name.clone(), seg.to_owned())),
                _ => None,
            })
            .collect()
    }

    /// [`Self::matches`], comparing literal segments ASCII-case-insensitively when `fold_case`
    /// (deny rules, and allow rules for an upstream that ignores case), and then also reading
    /// names as Windows does.
    pub fn matches_case(&self, path: &str, fold_case: bool) -> bool {
        self.matches_fold(path, if fold_case { Fold::Ascii } else { Fold::None })
    }

    /// [`Self::matches_case`], with the folding `fold` says.
    pub fn matches_fold(&self, path: &str, fold: Fold) -> bool {
        let fold_case = fold != Fold::None;
        // Why: Windows and IIS drop trailing dots and spaces from a name, so an IIS upstream
        // serves `/admin./x` and `/admin%20/x` as `/admin/x`; they slipped past a `/admin/**`
        // deny rule to a catch-all. Where case folds (deny rules, and allow rules whose
        // upstream ignores case), so do they.
        // Regression: tests::deny_rules_ignore_path_case
        let same = |l: &str, s: &str| {
            !s.is_empty()
                && (l == s
                    || (fold_case
                        && !windows_name(s).is_empty()
                        && (windows_name(l).eq_ignore_ascii_case(windows_name(s))
                            || (fold == Fold::Wide
                                && (s.contains('%') || l.contains('%'))
                                && wide_fold_eq(windows_name(l), windows_name(s))))))
        };
        // Nothing left of the path but maybe one trailing slash (which those frameworks
        // drop).
        let at_end = |mut rest: std::str::Split<'_, char>| match rest.next() {
            None => true,
            Some("") => rest.next().is_none(),
            Some(_) => false,
        };
        let mut segs = path.strip_prefix('/').unwrap_or(path).split('/');
        for pat in &*self.segments {
            let ok = match (segs.next(), pat) {
                // Why the format suffix, for deny rules: Rails routes `/secret.json` (its
                // default `(.:format)`) and older Spring `/secret.anything` (suffix pattern
                // matching) to `/secret`'s action, and they slipped past a deny rule for
                // `/secret` (or `/admin/**`, as `/admin.json`) to a catch-all. Only on the
                // path's last segment, where those frameworks read it.
                // Regression: tests::deny_rules_take_a_format_suffix
                (Some(s), Segment::Literal(l)) => {
                    same(l, s)
                        || (fold == Fold::Wide
                            && at_end(segs.clone())
                            && format_stems(s).any(|stem| same(l, stem)))
                }
                (Some(s), Segment::Any(_)) => !s.is_empty(),
                (None, _) => false,
            };
            if !ok {
                return false;
            }
        }
        if self.prefix {
            return true;
        }
        match segs.next() {
            None => true,
            // The root pattern `/` matches the root path. Why the other exact patterns take
            // one trailing slash: Express, ASP.NET Core, Rails and older Spring serve
            // `/admin/` from `/admin`'s handler, and `/admin/` slipped past a deny rule for
            // `/admin`, or an allow rule's requirements, to a catch-all allow.
            // Regression: tests::exact_patterns_take_a_trailing_slash
            Some("") => segs.next().is_none(),
            Some(_) => false,
        }
    }
}

/// A path segment cut before each of its first [`MAX_SUFFIXES`] dots (a dot that is its first
/// or last byte counted, and not cut at): the names a format suffix is read from, by the
/// rules ([`PathPattern::matches_fold`]), by the index ([`RouteTable::find`] looks up the
/// same stems) and by the lints.
///
/// Why one bound for all three: the rules read a suffix at every dot while the index looked
/// up the first four, so `check` called a deny rule for `/db.2024.01.15.sql.gz` dead behind
/// one for `/db.2024.01.15.sql` (a stem at the fifth dot), which the gateway never reached
/// through the index: the later rule decided the request. Regression:
/// tests::a_wildcard_host_or_a_format_suffix_shadows_a_later_rule
fn format_stems(segment: &str) -> impl Iterator<Item = &str> {
    segment
        .match_indices('.')
        .take(MAX_SUFFIXES)
        .filter(move |(i, _)| *i > 0 && i + 1 < segment.len())
        .map(move |(i, _)| &segment[..i])
}

/// How a path pattern's literal segments compare with a request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Exactly.
    None,
    /// In any ASCII case, and with Windows' trailing dots and spaces.
    Ascii,
    /// As `Ascii`, and with every letter folded as Java's `equalsIgnoreCase` folds it (deny
    /// rules: see [`wide_key`]).
    Wide,
}

/// A letter as Java's `equalsIgnoreCase` compares it: its simple uppercase, then that
/// uppercase's simple lowercase. `ſ` (U+017F) and `ı` (U+0131) are `s` and `i`, `İ` (U+0130)
/// `i`, the Kelvin sign `k`, `É` `é`; a letter whose uppercase is several (`ß`) is itself.
fn fold_letter(c: char) -> char {
    fn one(mut it: impl Iterator<Item = char>) -> Option<char> {
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }
    let upper = one(c.to_uppercase()).unwrap_or(c);
    if upper == '\u{130}' {
        return 'i';
    }
    one(upper.to_lowercase()).unwrap_or(upper)
}

/// A canonical segment as an upstream folding case as Java's `equalsIgnoreCase` reads it
/// (Windows' name first, [`windows_name`]): ASCII lowercased, each escaped UTF-8 letter
/// decoded, folded ([`fold_letter`]) and escaped again (or the ASCII letter it folds to);
/// escaped ASCII and bytes that are no UTF-8 letter kept as written. Borrowed when the name
/// is its own key.
///
/// Why every letter: deny rules compared names in ASCII case, and four letters besides, so
/// `/CAF%C3%89/x` passed a deny rule for `/caf%C3%A9/**` (and a case-insensitive allow rule's
/// requirements) to a catch-all, while Java, .NET and Windows serve it from that handler.
/// Regression: tests::deny_rules_fold_the_letters_that_case_map_to_ascii,
/// tests::deny_rules_fold_every_letter
fn wide_key(seg: &str) -> std::borrow::Cow<'_, str> {
    let name = windows_name(seg);
    if !name.bytes().any(|b| b.is_ascii_uppercase() || b == b'%') {
        return name.into();
    }
    // Only ASCII bytes and the escapes of whole UTF-8 letters come out: valid UTF-8.
    String::from_utf8(WideBytes::of(name).collect())
        .map_or_else(|_| name.into(), std::borrow::Cow::Owned)
}

/// The bytes of [`wide_key`], one at a time, so that two names compare without building
/// either: a comparison ends at the first byte that differs.
///
/// Why lazy: every candidate deny rule's literal was compared by building both keys whole
/// (a `format!` per escaped byte), so 300 rules against an 8 KB segment of escapes cost
/// 340 ms a request. Regression: tests::deny_rules_fold_every_letter
struct WideBytes<'a> {
    name: &'a [u8],
    at: usize,
    /// The rest of a folded letter's escape, written out.
    pending: [u8; 12],
    pending_len: u8,
    pending_at: u8,
}

impl<'a> WideBytes<'a> {
    fn of(name: &'a str) -> Self {
        Self {
            name: name.as_bytes(),
            at: 0,
            pending: [0; 12],
            pending_len: 0,
            pending_at: 0,
        }
    }

    /// The escaped byte at `i` (`%XX`), if there is one.
    fn escaped(&self, i: usize) -> Option<u8> {
        let t = self.name.get(i..i + 3)?;
        if t[0] != b'%' {
            return None;
        }
        let digit = |d: u8| char::from(d).to_digit(16);
        u8::try_from(digit(t[1])? * 16 + digit(t[2])?).ok()
    }

    /// The UTF-8 letter escaped at `i` (lead byte from 0xC2), and the escapes it takes.
    fn letter(&self, i: usize) -> Option<(char, usize)> {
        let lead = self.escaped(i)?;
        let len = match lead {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return None,
        };
        let mut bytes = [0u8; 4];
        for (k, byte) in bytes.iter_mut().enumerate().take(len) {
            *byte = self.escaped(i + 3 * k)?;
        }
        let letter = std::str::from_utf8(&bytes[..len]).ok()?.chars().next()?;
        Some((letter, len))
    }
}

impl Iterator for WideBytes<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        if self.pending_at < self.pending_len {
            let b = self.pending[usize::from(self.pending_at)];
            self.pending_at += 1;
            return Some(b);
        }
        let c = *self.name.get(self.at)?;
        if c == b'%'
            && let Some((letter, len)) = self.letter(self.at)
        {
            self.at += 3 * len;
            let folded = fold_letter(letter);
            if folded.is_ascii() {
                return u8::try_from(folded).ok();
            }
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            let mut utf8 = [0u8; 4];
            let mut n = 0;
            for byte in folded.encode_utf8(&mut utf8).bytes() {
                self.pending[n] = b'%';
                self.pending[n + 1] = HEX[usize::from(byte >> 4)];
                self.pending[n + 2] = HEX[usize::from(byte & 0xF)];
                n += 3;
            }
            self.pending_len = u8::try_from(n).unwrap_or(0);
            self.pending_at = 1;
            return Some(self.pending[0]);
        }
        self.at += 1;
        Some(c.to_ascii_lowercase())
    }
}

/// Whether two canonical segments are one name to an upstream that folds case as Java's
/// `equalsIgnoreCase` does ([`wide_key`]), compared lazily ([`WideBytes`]).
fn wide_fold_eq(a: &str, b: &str) -> bool {
    WideBytes::of(windows_name(a)).eq(WideBytes::of(windows_name(b)))
}

/// A segment's key in the route index: the coarsest reading any rule gives it
/// ([`wide_key`]), so that every rule that may match a segment is listed under its key.
/// Borrowed when the segment is its own key.
fn index_key<'s>(seg: &'s str, buf: &'s mut String) -> &'s str {
    match wide_key(seg) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(k) => {
            *buf = k;
            buf
        }
    }
}

/// A path segment as Windows and IIS read a name: an NTFS stream suffix (`::$DATA`,
/// `:name:$INDEX_ALLOCATION`) and trailing dots and spaces (`%20`) dropped.
///
/// Why the stream: IIS serves `/admin::$INDEX_ALLOCATION/x` from the directory `admin`, and it
/// passed a `/admin/**` deny rule to a catch-all allow at every door (also spelled
/// `%3A%3A%24`). A `:` without a stream type (`/v1/users:list`) is a name of its own.
/// Regression: tests::deny_rules_ignore_path_case
fn windows_name(seg: &str) -> &str {
    let mut s = match (seg.find(':'), seg.contains(":$")) {
        (Some(colon), true) => &seg[..colon],
        _ => seg,
    };
    loop {
        if let Some(t) = s.strip_suffix('.') {
            s = t;
        } else if let Some(t) = s.strip_suffix("%20") {
            s = t;
        } else {
            return s;
        }
    }
}

fn parse_segment(seg: &str) -> Result<Segment, PatternError> {
    if seg == "**" || seg.contains("**") {
        return Err(PatternError::InnerDoubleStar);
    }
    if seg == "*" {
        return Ok(Segment::Any(None));
    }
    if let Some(name) = seg.strip_prefix('{') {
        let name = name.strip_suffix('}').ok_or(PatternError::BadParameter)?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(PatternError::BadParameter);
        }
        return Ok(Segment::Any(Some(name.into())));
    }
    if seg.contains(['{', '}', '*']) {
        return Err(PatternError::BadParameter);
    }
    // A literal must be spelled as canonical paths are, or it could never match.
    let canonical = crate::request::path::canonicalize(&format!("/{seg}"))
        .is_ok_and(|c| c.len() == seg.len() + 1 && c[1..] == *seg);
    if seg.is_empty() || seg == "." || seg == ".." || !canonical {
        return Err(PatternError::NotCanonical);
    }
    Ok(Segment::Literal(seg.into()))
}

/// Methods of the IANA HTTP Method Registry that `parse` accepts (upper-case letters only),
/// the cache-purge extensions proxies use, and `TRACK` (IIS's `TRACE`).
const KNOWN_METHODS: &[&str] = &[
    "ACL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "OPTIONS",
    "ORDERPATCH",
    "PATCH",
    "POST",
    "PRI",
    "PROPFIND",
    "PROPPATCH",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "TRACE",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "PURGE",
    "BAN",
    "TRACK",
];

/// The common method `name` may misspell, if it is no known method and within one edit of
/// one (two for names of five letters or more), as `DELET`, `GTE` or `OPTINOS` are.
///
/// Why: any token is a method, so `methods: [DELET]` in a deny rule was accepted and denied
/// nothing: DELETE reached the allow rule after it. A warning, not an error: extension
/// methods close to a common one exist (`BATCH`, `FETCH`), and a heuristic must not stop a
/// gateway from starting. Regression: tests::methods
pub fn misspelled_method(name: &str) -> Option<&'static str> {
    const COMMON: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
    ];
    if KNOWN_METHODS.contains(&name) {
        return None;
    }
    let most = if name.len() >= 5 { 2 } else { 1 };
    COMMON
        .into_iter()
        .map(|c| (edit_distance(name.as_bytes(), c.as_bytes()), c))
        .filter(|(d, _)| *d <= most)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Edits (insertions, deletions, substitutions and swaps of neighbours) from `a` to `b`.
pub(crate) fn edit_distance(a: &[u8], b: &[u8]) -> usize {
    let mut prev2: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(prev2[j - 2] + 1);
            }
        }
        prev2 = std::mem::replace(&mut prev, cur);
    }
    prev[b.len()]
}

// === impl MethodSet ===

impl MethodSet {
    /// Parses method names (upper case tokens).
    pub fn parse(names: &[String]) -> Result<Self, (usize, PatternError)> {
        let mut out = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            if n.bytes().any(|b| b.is_ascii_lowercase()) {
                return Err((i, PatternError::LowercaseMethod));
            }
            if n.is_empty() || n.bytes().any(|b| !b.is_ascii_uppercase()) {
                return Err((i, PatternError::BadMethod));
            }
            out.push(Method::from_bytes(n.as_bytes()).map_err(|_| (i, PatternError::BadMethod))?);
        }
        // Why: a HEAD is the GET without its body (RFC 9110 9.3.2), and servers answer it
        // from the GET's handler: a `methods: [GET]` deny rule let `HEAD /secret` through to
        // a catch-all allow, telling the caller what exists and its length. GET includes
        // HEAD, as in nginx's `limit_except` and Go's ServeMux.
        // Regression: tests::get_includes_head
        if out.contains(&Method::GET) && !out.contains(&Method::HEAD) {
            out.push(Method::HEAD);
        }
        Ok(Self(out.into()))
    }

    /// Empty sets contain every method but the ones only a rule naming them matches
    /// ([`is_explicit_only`]).
    pub fn contains(&self, m: &Method) -> bool {
        if self.0.is_empty() {
            !is_explicit_only(m)
        } else {
            self.0.contains(m)
        }
    }
}

/// Whether only a rule naming `m` in `match.methods` matches it (see [`MethodSet::contains`]).
/// Why: `TRACE` and `TRACK` echo the request back (credentials and cookies included:
/// cross-site tracing) and `CONNECT` opens a tunnel, so a rule allowing any method does not
/// allow them. Regression: tests::explicit_only_methods
pub fn is_explicit_only(m: &Method) -> bool {
    *m == Method::TRACE || *m == Method::CONNECT || m.as_str() == "TRACK"
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_named_twice_is_refused() {
        assert_eq!(
            PathPattern::parse("/t/{id}/u/{id}"),
            Err(PatternError::RepeatedParameter("id".into()))
        );
        assert_eq!(
            PathPattern::parse("/t/{id}/u/{id}/**"),
            Err(PatternError::RepeatedParameter("id".into()))
        );
        assert!(PathPattern::parse("/t/{id}/u/{uid}").is_ok());
        assert!(PathPattern::parse("/t/*/u/*").is_ok());
    }

    #[test]
    fn get_includes_head() {
        let get = MethodSet::parse(&["GET".into()]).unwrap();
        assert!(get.contains(&Method::GET) && get.contains(&Method::HEAD));
        assert!(!get.contains(&Method::POST));
        let post = MethodSet::parse(&["POST".into()]).unwrap();
        assert!(!post.contains(&Method::HEAD));
    }

    #[test]
    fn explicit_only_methods() {
        let any = MethodSet::default();
        let named = MethodSet::parse(&["TRACE".into(), "GET".into()]).unwrap();
        let track = Method::from_bytes(b"TRACK").unwrap();
        for m in [Method::GET, Method::POST, Method::DELETE, Method::OPTIONS] {
            assert!(any.contains(&m), "{m}");
        }
        for m in [Method::TRACE, track.clone(), Method::CONNECT] {
            assert!(!any.contains(&m), "{m}");
        }
        assert!(named.contains(&Method::TRACE) && !named.contains(&track));
    }

    #[test]
    fn path_patterns() {
        let cases: &[(&str, &str, bool)] = &[
            ("/a", "/a", true),
            ("/a", "/a/", true),
            ("/a", "/a//", false),
            ("/a", "/ab", false),
            ("/a", "/a/b", false),
            ("/a/**", "/a", true),
            ("/a/**", "/a/", true),
            ("/a/**", "/a/b/c", true),
            ("/a/**", "/ab", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/", "/", true),
            ("/", "/a", false),
            ("/a/*/c", "/a/b/c", true),
            ("/a/*/c", "/a//c", false),
            ("/a/*/c", "/a/b/d", false),
            ("/users/{id}", "/users/42", true),
            ("/users/{id}", "/users/", false),
            ("/users/{id}/**", "/users/42/orders/1", true),
            ("/users/{id}/**", "/users", false),
        ];
        for (pat, path, want) in cases {
            let p = PathPattern::parse(pat).unwrap();
            assert_eq!(p.matches(path), *want, "{pat} vs {path}");
        }
    }

    #[test]
    fn case_insensitive_allow_rules() {
        let admin = |ci: bool| Rule {
            context: Box::default(),
            case_insensitive: ci,
            timeouts: None,
            ..rule("admin", &["/admin/{id}/**"], Effect::Allow, &[])
        };
        let table =
            |ci: bool| RouteTable::new(vec![admin(ci), rule("all", &["/**"], Effect::Allow, &[])]);
        let decided = |t: &RouteTable, path: &str| {
            let (parts, conn) = get(path);
            let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
            t.find(&facts).map(|r| r.id.0.to_string())
        };
        let t = table(false);
        assert_eq!(decided(&t, "/admin/7/x").as_deref(), Some("admin"));
        assert_eq!(
            decided(&t, "/ADMIN/7/x").as_deref(),
            Some("all"),
            "exact by default"
        );
        let t = table(true);
        for p in ["/ADMIN/7/x", "/Admin/7/", "/aDmIn/7/y/z"] {
            assert_eq!(decided(&t, p).as_deref(), Some("admin"), "{p}");
        }
        assert_eq!(decided(&t, "/ADMINS/7").as_deref(), Some("all"));
        // Through the index too: trailing dots and spaces, as Windows reads names.
        for p in ["/admin./7/x", "/ADMIN%20/7/"] {
            assert_eq!(decided(&t, p).as_deref(), Some("admin"), "{p}");
        }
        assert_eq!(
            decided(&table(false), "/admin./7/x").as_deref(),
            Some("all"),
            "exact by default"
        );
        let params = admin(true).params("/ADMIN/Seven/x");
        assert_eq!(params, [("id".into(), "Seven".to_owned())]);
    }

    #[test]
    fn case_insensitive_allow_rules_refuse_what_only_folds_widely() {
        let admin = |ci: bool| Rule {
            context: Box::default(),
            case_insensitive: ci,
            timeouts: None,
            ..rule("admin", &["/admin/**"], Effect::Allow, &[])
        };
        let table =
            |ci: bool| RouteTable::new(vec![admin(ci), rule("all", &["/**"], Effect::Allow, &[])]);
        let decided = |t: &RouteTable, path: &str| {
            let (parts, conn) = get(path);
            let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
            t.find(&facts)
                .map(|r| (r.id.0.to_string(), r.matches_only_widely(&facts.path)))
        };
        // For an upstream that ignores case: the admin rule, refusing what only folds widely.
        let t = table(true);
        for (path, widely) in [
            ("/adm%C4%B1n/x", true),
            ("/ADM%C4%B0N/", true),
            ("/ADMIN/x", false),
            ("/admin/%C4%B1", false),
        ] {
            assert_eq!(
                decided(&t, path),
                Some(("admin".to_owned(), widely)),
                "{path}"
            );
        }
        // Exact by default: another name, for the catch-all.
        assert_eq!(
            decided(&table(false), "/adm%C4%B1n/x"),
            Some(("all".to_owned(), false))
        );
        // A deny rule denies anyway.
        assert!(!rule("d", &["/admin/**"], Effect::Deny, &[]).matches_only_widely("/adm%C4%B1n"));
    }

    #[test]
    fn deny_rules_ignore_path_case() {
        let p = PathPattern::parse("/admin/**").unwrap();
        assert!(p.matches_case("/ADMIN/users", true));
        assert!(p.matches_case("/Admin", true));
        assert!(!p.matches_case("/ADMIN/users", false));
        assert!(!p.matches_case("/ADMINS", true));
        // Windows and IIS drop trailing dots and spaces from a name.
        for path in [
            "/admin./users",
            "/ADMIN%20/users",
            "/admin..",
            "/Admin.%20./x",
        ] {
            assert!(p.matches_case(path, true), "{path}");
            assert!(!p.matches_case(path, false), "{path}");
        }
        assert!(!p.matches_case("/admin.x/users", true));
        assert!(!p.matches_case("/.../users", true));
        // IIS reads an NTFS stream suffix as the name itself.
        for path in [
            "/admin::$INDEX_ALLOCATION/users",
            "/ADMIN:x:$DATA",
            "/admin.::$INDEX_ALLOCATION/x",
        ] {
            assert!(p.matches_case(path, true), "{path}");
            assert!(!p.matches_case(path, false), "{path}");
        }
        assert!(!p.matches_case("/admin:list/users", true));
        let dotted = PathPattern::parse("/v1./x").unwrap();
        assert!(dotted.matches_case("/v1./x", false));
        assert!(dotted.matches_case("/V1/x", true));
    }

    /// A deny rule's last matched segment takes a format suffix (`/secret.json`), as Rails'
    /// `(.:format)` and older Spring's suffix matching route it; only at the path's end, and
    /// never for allow rules, whose match is not widened.
    #[test]
    fn deny_rules_take_a_format_suffix() {
        for (pattern, path, denied) in [
            ("/secret", "/secret.json", true),
            ("/secret", "/Secret.XML", true),
            ("/secret", "/secret.json/", true),
            ("/secret", "/secret.", true),
            ("/secret", "/secret.json/x", false),
            ("/secret", "/secrets.json", false),
            ("/secret", "/.json", false),
            ("/admin/**", "/admin.json", true),
            ("/admin/**", "/admin.json/users", false),
            ("/admin/**", "/admin.json/", true),
            ("/u/{id}/delete", "/u/1/delete.json", true),
            ("/u/{id}", "/u/1.json", true),
        ] {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches_fold(path, Fold::Wide), denied, "{pattern} {path}");
            if path.contains(".json") || path.contains(".XML") {
                assert!(
                    !p.matches_fold(path, Fold::Ascii) || pattern == "/u/{id}",
                    "an allow rule is not widened: {pattern} {path}"
                );
            }
        }
    }

    #[test]
    fn deny_rules_fold_the_letters_that_case_map_to_ascii() {
        let cases: &[(&str, &str, bool)] = &[
            // pattern, path, matches with the wide fold
            ("/secrets/**", "/%C5%BFecrets/x", true),
            ("/secrets/**", "/%C5%BFECRETS/x", true),
            ("/keys/**", "/%E2%84%AAeys/x", true),
            ("/admin/**", "/adm%C4%B1n/x", true),
            ("/admin/**", "/ADM%C4%B0N/x", true),
            ("/admin/**", "/adm%C4%B1n./x", true),
            ("/admin", "/adm%C4%B1n/", true),
            // Other letters are other names.
            ("/admin/**", "/adm%C3%AEn/x", false),
            ("/secrets/**", "/%C5%BF%C5%BFecrets/x", false),
            ("/admin/**", "/adm%C4%B1/x", false),
            ("/admin/**", "/adm%C4n/x", false),
            // The letter in the pattern (`İdare`, Turkish for administration).
            ("/%C4%B0dare/**", "/idare/x", true),
            ("/%C4%B0dare/**", "/IDARE/x", true),
        ];
        for &(pattern, path, wide) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches_fold(path, Fold::Wide), wide, "{pattern} {path}");
            // The ASCII reading alone does not.
            assert!(!p.matches_fold(path, Fold::Ascii), "{pattern} {path}");
            assert!(!p.matches_fold(path, Fold::None), "{pattern} {path}");
        }
    }

    #[test]
    fn deny_rules_fold_every_letter() {
        let cases: &[(&str, &str, bool)] = &[
            // pattern, path, matches with the wide fold
            ("/caf%C3%A9/**", "/CAF%C3%89/x", true),
            ("/CAF%C3%89/**", "/caf%C3%A9/x", true),
            (
                "/%D0%B0%D0%B4%D0%BC%D0%B8%D0%BD/**",
                "/%D0%90%D0%94%D0%9C%D0%98%D0%9D/x",
                true,
            ),
            ("/stra%C3%9Fe/**", "/STRA%C3%9FE/x", true),
            // `ß` is not `ss` to `equalsIgnoreCase`; other letters are other names.
            ("/strasse/**", "/stra%C3%9Fe/x", false),
            ("/caf%C3%A9/**", "/caf%C3%A8/x", false),
            ("/caf%C3%A9/**", "/cafe/x", false),
            // Escaped ASCII is kept as written.
            ("/a%20b/**", "/A%20B/x", true),
            ("/100%25/**", "/100%25/x", true),
        ];
        for &(pattern, path, wide) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches_fold(path, Fold::Wide), wide, "{pattern} {path}");
        }
        // The index finds the rule under the folded key.
        let mut a = String::new();
        let mut b = String::new();
        assert_eq!(
            index_key("CAF%C3%89", &mut a),
            index_key("caf%C3%A9", &mut b)
        );
    }

    #[test]
    fn exact_patterns_take_a_trailing_slash() {
        let cases: &[(&str, &str, bool, bool)] = &[
            // pattern, path, matches when folding, when not
            ("/admin", "/admin", true, true),
            ("/admin", "/admin/", true, true),
            ("/admin", "/ADMIN/", true, false),
            ("/admin", "/admin./", true, false),
            ("/admin", "/admin/x", false, false),
            ("/admin", "/adminx", false, false),
            ("/users/{id}", "/users/7/", true, true),
            ("/users/{id}", "/users/", false, false),
            ("/", "/", true, true),
            ("/admin/**", "/admin/", true, true),
        ];
        for &(pattern, path, folding, exact) in cases {
            let p = PathPattern::parse(pattern).unwrap();
            assert_eq!(p.matches_case(path, true), folding, "{pattern} {path}");
            assert_eq!(p.matches_case(path, false), exact, "{pattern} {path}");
        }
    }

    #[test]
    fn bad_path_patterns() {
        assert_eq!(PathPattern::parse("a"), Err(PatternError::NotAbsolute));
        assert_eq!(
            PathPattern::parse("/a/**/b"),
            Err(PatternError::InnerDoubleStar)
        );
        assert_eq!(PathPattern::parse("/a//b"), Err(PatternError::NotCanonical));
        assert_eq!(
            PathPattern::parse("/a/../b"),
            Err(PatternError::NotCanonical)
        );
        assert_eq!(PathPattern::parse("/a/{}"), Err(PatternError::BadParameter));
        assert_eq!(PathPattern::parse("/a/x*"), Err(PatternError::BadParameter));
    }

    #[test]
    fn host_patterns() {
        let cases: &[(&str, &str, bool)] = &[
            ("example.com", "example.com", true),
            ("Example.COM.", "example.com", true),
            ("example.com", "www.example.com", false),
            ("*.example.com", "www.example.com", true),
            ("*.example.com", "a.b.example.com", false),
            ("*.example.com", "example.com", false),
            ("*", "anything", true),
        ];
        for (pat, host, want) in cases {
            let p = HostPattern::parse(pat).unwrap();
            assert_eq!(p.matches(host), *want, "{pat} vs {host}");
        }
        // A deny rule's wildcard stands for any depth.
        let w = HostPattern::parse("*.example.com").unwrap();
        assert!(w.matches_at_depth("a.b.example.com", true));
        assert!(!w.matches_at_depth("example.com", true));
        assert!(!w.matches_at_depth("badexample.com", true));
        assert!(HostPattern::parse("exa mple.com").is_err());
        assert_eq!(
            HostPattern::parse("admin.example:8443"),
            Err(PatternError::HostPort)
        );
        assert_eq!(
            HostPattern::parse("a.com:99999"),
            Err(PatternError::HostPort)
        );
        assert_eq!(HostPattern::parse("a.com:"), Err(PatternError::BadHost));
        assert_eq!(HostPattern::parse("[::1]"), Err(PatternError::BadHost));
    }

    /// Regression: the lints read every wildcard as one label after deny rules' became any
    /// depth: an allow rule deciding part of a later deny rule went unsaid, and a deny rule
    /// after an allow rule with the same wildcard was called dead.
    #[test]
    fn lints_read_a_deny_wildcard_at_any_depth() {
        let with_hosts = |name: &str, effect: Effect, host: &str| Rule {
            hosts: vec![HostPattern::parse(host).unwrap()],
            ..rule(name, &["/**"], effect, &[])
        };
        let partners = with_hosts("partners", Effect::Allow, "*.partners.internal.example");
        let internal = with_hosts("internal", Effect::Deny, "*.internal.example");
        assert!(partners.overlaps(&internal));
        assert!(internal.overlaps(&partners));
        let allow = with_hosts("svc-allow", Effect::Allow, "*.svc.example");
        let deny = with_hosts("svc-deny", Effect::Deny, "*.svc.example");
        assert!(
            !deny.shadowed_by(&allow),
            "the deny rule decides a.b.svc.example"
        );
        assert!(deny.shadowed_by(&with_hosts("d", Effect::Deny, "*.svc.example")));
        assert!(deny.shadowed_by(&with_hosts("any", Effect::Allow, "*")));
        // One-label readings on both sides meet only on equal suffixes.
        let a = with_hosts("a", Effect::Allow, "*.p.example");
        let b = with_hosts("b", Effect::Allow, "*.example");
        assert!(!a.overlaps(&b));
        let exact = with_hosts("e", Effect::Allow, "a.b.internal.example");
        assert!(exact.overlaps(&internal));
        assert!(!exact.overlaps(&with_hosts("w", Effect::Allow, "*.internal.example")));
    }

    /// An earlier rule whose host wildcard or format suffix reading matches every request of a
    /// later rule shadows it; and each shadowing said here is borne out by the rules' own
    /// matching on the requests listed (never a rule called dead that decides one of them).
    #[test]
    fn a_wildcard_host_or_a_format_suffix_shadows_a_later_rule() {
        let r = |name: &str, host: Option<&str>, path: &str, effect: Effect| Rule {
            hosts: host
                .map(|h| vec![HostPattern::parse(h).unwrap()])
                .unwrap_or_default(),
            ..rule(name, &[path], effect, &[])
        };
        use Effect::{Allow, Deny};
        // (earlier, later, shadowed, requests the later rule matches: (host, path))
        type Case<'a> = (Rule, Rule, bool, &'a [(&'a str, &'a str)]);
        let cases: Vec<Case<'_>> = vec![
            (
                r("wild", Some("*.example.org"), "/w/**", Allow),
                r("sub", Some("x.example.org"), "/w/1", Allow),
                true,
                &[("x.example.org", "/w/1")],
            ),
            (
                r("wild", Some("*.example.com"), "/**", Allow),
                r("admin", Some("a.example.com"), "/admin/**", Deny),
                true,
                &[("a.example.com", "/admin/x")],
            ),
            // One label only: `a.b.example.org` is not the allow wildcard's.
            (
                r("wild", Some("*.example.org"), "/**", Allow),
                r("deep", Some("a.b.example.org"), "/**", Allow),
                false,
                &[("a.b.example.org", "/x")],
            ),
            (
                r("wild", Some("*.example.org"), "/**", Deny),
                r("deep", Some("*.b.example.org"), "/**", Allow),
                true,
                &[("a.b.example.org", "/x")],
            ),
            (
                r("wild", Some("*.example.org"), "/**", Allow),
                r("deeper", Some("*.b.example.org"), "/**", Allow),
                false,
                &[("a.b.example.org", "/x")],
            ),
            (
                r("exact", Some("x.example.org"), "/**", Allow),
                r("wild", Some("*.example.org"), "/**", Allow),
                false,
                &[("y.example.org", "/x")],
            ),
            (
                r("deny-secret", None, "/secret", Deny),
                r("secret-json", None, "/secret.json", Allow),
                true,
                &[("a.test", "/secret.json"), ("a.test", "/secret.json/")],
            ),
            // A prefix reads it too: `/admin.json` is `/admin/**`'s.
            (
                r("deny-admin", None, "/admin/**", Deny),
                r("admin-json", None, "/admin.json", Allow),
                true,
                &[("a.test", "/admin.json")],
            ),
            (
                r("deny-admin", None, "/v1/admin", Deny),
                r("admin-json", None, "/v1/ADMIN.tar.gz", Allow),
                true,
                &[("a.test", "/v1/ADMIN.tar.gz")],
            ),
            // A suffix on a segment that is not the last is no format.
            (
                r("deny-secret", None, "/secret", Deny),
                r("nested", None, "/secret.json/x", Allow),
                false,
                &[("a.test", "/secret.json/x")],
            ),
            // Past the fourth dot no suffix is read, by the rules or the index.
            (
                r("deny-dump", None, "/backup/db.2024.01.15.sql", Deny),
                r("deny-dump-gz", None, "/backup/db.2024.01.15.sql.gz", Deny),
                false,
                &[("a.test", "/backup/db.2024.01.15.sql.gz")],
            ),
            (
                r("deny-v", None, "/v1.2.3.4", Deny),
                r("v-json", None, "/v1.2.3.4.json", Allow),
                true,
                &[("a.test", "/v1.2.3.4.json")],
            ),
            (
                r("deny-dot", None, "/.a.b.c.d", Deny),
                r("dot-e", None, "/.a.b.c.d.e", Allow),
                false,
                &[("a.test", "/.a.b.c.d.e")],
            ),
            // An allow rule reads no suffix.
            (
                r("secret", None, "/secret", Allow),
                r("secret-json", None, "/secret.json", Allow),
                false,
                &[("a.test", "/secret.json")],
            ),
            (
                r("deny-secret", None, "/secret", Deny),
                r("json-tree", None, "/secret.json/**", Allow),
                false,
                &[("a.test", "/secret.json/x")],
            ),
        ];
        for (earlier, later, shadowed, requests) in &cases {
            assert_eq!(
                later.shadowed_by(earlier),
                *shadowed,
                "{} after {}",
                later.id.0,
                earlier.id.0
            );
            for (host, path) in *requests {
                let (mut parts, conn) = get(path);
                parts
                    .headers
                    .insert("host", http::HeaderValue::from_str(host).unwrap());
                let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
                assert!(later.matches(&facts), "{} {host}{path}", later.id.0);
                // Shadowed: the earlier rule decides it; not: here is one it leaves.
                assert_eq!(
                    earlier.matches(&facts),
                    *shadowed,
                    "{} {host}{path}",
                    earlier.id.0
                );
            }
        }
    }

    /// A rule naming no method matches none of TRACE, TRACK and CONNECT: a later rule naming
    /// them decides those, and is not shadowed.
    #[test]
    fn an_empty_method_set_covers_no_trace() {
        let with = |name: &str, methods: &[&str]| Rule {
            methods: MethodSet::parse(&methods.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>())
                .unwrap(),
            ..rule(name, &["/internal/**"], Effect::Deny, &[])
        };
        let any = with("any", &[]);
        assert!(!with("trace", &["CONNECT", "TRACE"]).shadowed_by(&any));
        assert!(!with("track", &["GET", "TRACK"]).shadowed_by(&any));
        assert!(with("get", &["GET", "POST"]).shadowed_by(&any));
        assert!(with("none", &[]).shadowed_by(&any));
        assert!(!any.methods.contains(&Method::TRACE));
    }

    #[test]
    fn a_folding_rule_is_not_shadowed_by_an_exact_one() {
        let allow = rule("reports", &["/reports"], Effect::Allow, &[]);
        let deny = rule("reports-deny", &["/reports"], Effect::Deny, &[]);
        assert!(!deny.shadowed_by(&allow), "the deny rule decides /REPORTS");
        assert!(deny.shadowed_by(&rule("d", &["/reports"], Effect::Deny, &[])));
        assert!(deny.shadowed_by(&rule("any", &["/**"], Effect::Allow, &[])));
        assert!(allow.shadowed_by(&rule("a", &["/reports"], Effect::Allow, &[])));
    }

    /// Regression: a deny rule on `*.internal.example` was passed by a deeper name, and a
    /// port-qualified one by leaving the port out (see [`HostPattern`]).
    #[test]
    fn deny_rules_take_the_wide_reading_of_a_host_wildcard() {
        let deny = Rule {
            hosts: vec![HostPattern::parse("*.internal.example").unwrap()],
            ..rule("deny", &["/**"], Effect::Deny, &[])
        };
        let allow = Rule {
            hosts: vec![HostPattern::parse("*.internal.example").unwrap()],
            ..rule("allow", &["/**"], Effect::Allow, &[])
        };
        for (host, denied, allowed) in [
            ("a.internal.example", true, true),
            ("a.b.internal.example", true, false),
            ("internal.example", false, false),
        ] {
            let (mut parts, conn) = get("/x");
            parts
                .headers
                .insert("host", http::HeaderValue::from_static(host));
            let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
            assert_eq!(deny.matches(&facts), denied, "{host}");
            assert_eq!(allow.matches(&facts), allowed, "{host}");
        }
    }

    /// A GET of `path` for host `h`, and the connection it came on.
    fn get(path: &str) -> (http::request::Parts, crate::request::facts::ConnInfo) {
        let conn =
            crate::request::facts::ConnInfo::new("192.0.2.1:1".parse().unwrap(), "l".into(), None);
        let parts = http::Request::get(path)
            .header("host", "h")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        (parts, conn)
    }

    #[test]
    fn context_extensions_narrow_a_rule() {
        let mut narrow = rule("narrow", &["/**"], Effect::Deny, &[]);
        narrow.context = Box::new([("svc".into(), "billing".into())]);
        let wide = rule("wide", &["/**"], Effect::Allow, &[]);
        let (parts, conn) = get("/x");
        let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
        assert!(!narrow.matches(&facts), "no extensions: no match");
        let billing: &[(&str, &str)] = &[("svc", "billing")];
        let other: &[(&str, &str)] = &[("svc", "shop")];
        for (context, expected) in [(billing, true), (other, false)] {
            let with = RequestFacts {
                context: Some(context),
                ..RequestFacts::from_parts(&parts, &conn, &[]).unwrap()
            };
            assert_eq!(narrow.matches(&with), expected, "{context:?}");
        }
        // A rule asking for more is shadowed by one asking for less, not the other way.
        let mut narrower = rule("narrower", &["/**"], Effect::Deny, &[]);
        narrower.context = Box::new([
            ("svc".into(), "billing".into()),
            ("stage".into(), "prod".into()),
        ]);
        assert!(narrower.shadowed_by(&narrow));
        assert!(!narrow.shadowed_by(&narrower));
        assert!(narrow.shadowed_by(&wide));
        let mut shop = rule("shop", &["/**"], Effect::Allow, &[]);
        shop.context = Box::new([("svc".into(), "shop".into())]);
        assert!(!shop.overlaps(&narrow), "one name, two values");
        assert!(narrower.overlaps(&narrow));
    }

    #[test]
    fn methods() {
        let m = MethodSet::parse(&["GET".into(), "PURGE".into()]).unwrap();
        assert!(m.contains(&Method::GET));
        assert!(m.contains(&Method::from_bytes(b"PURGE").unwrap()));
        assert!(!m.contains(&Method::POST));
        assert!(MethodSet::default().contains(&Method::DELETE));
        assert_eq!(
            MethodSet::parse(&["get".into()]),
            Err((0, PatternError::LowercaseMethod))
        );
        assert_eq!(
            MethodSet::parse(&["GE T".into()]),
            Err((0, PatternError::BadMethod))
        );
        // Typos of common methods are named; registered and extension methods are not.
        for (typo, meant) in [
            ("DELET", "DELETE"),
            ("DELTE", "DELETE"),
            ("GTE", "GET"),
            ("GETT", "GET"),
            ("POTS", "POST"),
            ("PTACH", "PATCH"),
            ("OPTINOS", "OPTIONS"),
            ("HAED", "HEAD"),
        ] {
            assert_eq!(misspelled_method(typo), Some(meant), "{typo}");
            assert!(
                MethodSet::parse(&[typo.into()]).is_ok(),
                "{typo}: a warning only"
            );
        }
        for ok in [
            "PURGE",
            "PROPFIND",
            "MKCOL",
            "REPORT",
            "QUERY",
            "PUT",
            "BAN",
            "TRACK",
            "TRACE",
            "FROBNICATE",
        ] {
            assert_eq!(misspelled_method(ok), None, "{ok}");
        }
    }

    fn rule(name: &str, paths: &[&str], effect: Effect, methods: &[&str]) -> Rule {
        Rule {
            context: Box::default(),
            id: RuleId(name.into()),
            file: "f".into(),
            hosts: Vec::new(),
            paths: paths
                .iter()
                .map(|p| PathPattern::parse(p).unwrap())
                .collect(),
            methods: MethodSet::parse(&methods.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>())
                .unwrap(),
            effect,
            upstream: None,
            authenticators: Box::default(),
            anonymous: true,
            query_credentials: None,
            require: crate::authz::require::Requirements::default(),
            identity: crate::authz::identity::IdentityHeaders::default(),
            when: None,
            denial: None,
            rate_limit: None,
            guard: None,
            delegate: None,
            case_insensitive: false,
            timeouts: None,
            edge: None,
        }
    }

    /// A deny rule's format suffix (`/secret.json`) is found through the index, which files the
    /// rule under `secret`: the suffix was read by the rule but the rule was never tried.
    #[test]
    fn a_format_suffix_reaches_the_deny_rule_through_the_index() {
        let table = RouteTable::new(vec![
            rule("secret", &["/secret"], Effect::Deny, &[]),
            rule("admin", &["/admin/**"], Effect::Deny, &[]),
            rule("delete", &["/u/{id}/delete"], Effect::Deny, &[]),
            rule("api", &["/api"], Effect::Allow, &[]),
            rule("all", &["/**"], Effect::Allow, &[]),
        ]);
        let conn =
            crate::request::facts::ConnInfo::new("127.0.0.1:1".parse().unwrap(), "l".into(), None);
        for (path, decided) in [
            ("/secret.json", "secret"),
            ("/Secret.JSON", "secret"),
            ("/secret.json/", "secret"),
            ("/secret.a.b", "secret"),
            ("/admin.json", "admin"),
            ("/admin.x.y", "admin"),
            ("/u/1/delete.json", "delete"),
            ("/u/1/delete.a.b", "delete"),
            ("/secret.json/x", "all"),
            ("/secrets.json", "all"),
            // Allow rules are not widened.
            ("/api.json", "all"),
            ("/api", "api"),
        ] {
            let (parts, ()) = http::Request::get(path)
                .header("host", "h")
                .body(())
                .unwrap()
                .into_parts();
            let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
            assert_eq!(
                table.find(&facts).map(|r| r.id.0.to_string()).as_deref(),
                Some(decided),
                "{path}"
            );
        }
    }

    #[test]
    fn the_index_finds_what_trying_every_rule_in_order_finds() {
        let rules = vec![
            rule("deny-admin", &["/admin/**"], Effect::Deny, &[]),
            rule("deny-secrets", &["/secrets"], Effect::Deny, &["POST"]),
            rule("long-s", &["/%C5%BFecrets"], Effect::Allow, &[]),
            rule("users-exact", &["/api/users"], Effect::Allow, &["GET"]),
            rule("user", &["/api/users/{id}"], Effect::Allow, &[]),
            rule(
                "orders",
                &["/api/{v}/orders/**", "/orders/**"],
                Effect::Allow,
                &[],
            ),
            rule("api", &["/api/**"], Effect::Allow, &["POST"]),
            rule("star", &["/*/x"], Effect::Allow, &[]),
            rule(
                "deep",
                &["/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/**"],
                Effect::Allow,
                &[],
            ),
            rule("root", &["/"], Effect::Allow, &[]),
            rule("any-delete", &[], Effect::Allow, &["DELETE"]),
            rule("fallback", &["/**"], Effect::Allow, &["GET"]),
        ];
        let table = RouteTable::new(rules);
        let conn =
            crate::request::facts::ConnInfo::new("127.0.0.1:1".parse().unwrap(), "l".into(), None);
        let paths = [
            "/",
            "/admin",
            "/ADMIN/x",
            "/Admin/users",
            "/api",
            "/api/users",
            "/api/Users",
            "/api/users/7",
            "/api/users/7/x",
            "/api/v1/orders",
            "/api/v1/orders/9",
            "/orders",
            "/orders/1",
            "/q/x",
            "/api/x",
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p",
            "/a/b/c",
            "/zzz",
            "/api/",
            "/x/",
            "/adm%C4%B1n/x",
            "/%C5%BFecrets",
            "/api/%C3%A9",
            "/ADMIN./x",
            // Format suffixes (deny rules read them): at the end, deep, several dots.
            "/admin.json",
            "/secrets.json",
            "/secrets.json/",
            "/Secrets.a.b.c.d.e",
            "/api/users.json",
            "/api/users/7.json",
            "/admin.json/x",
            "/.json",
            "/a/b/c/d/e/f/g/h/i/j/k/l/m/n.json",
        ];
        for method in ["GET", "POST", "DELETE", "PUT"] {
            for path in paths {
                let (parts, ()) = http::Request::builder()
                    .method(method)
                    .uri(path)
                    .header("host", "h")
                    .body(())
                    .unwrap()
                    .into_parts();
                let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
                let indexed = table.find(&facts).map(|r| r.id.0.to_string());
                let scanned = table
                    .rules()
                    .iter()
                    .find(|r| r.matches(&facts))
                    .map(|r| r.id.0.to_string());
                assert_eq!(indexed, scanned, "{method} {path}");
            }
        }
    }
}
