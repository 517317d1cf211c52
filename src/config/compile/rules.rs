//! Rules: each policy file's rules, in file-name then file order, checked against the
//! config's upstreams, authenticators, rate limits and delegates.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::HeaderName;

use super::upstreams::Upstreams;
use super::{Cx, lints::Linter, unknown_name};
use crate::authn::Authn;
use crate::authz::delegate::Delegate;
use crate::authz::identity::IdentityHeaders;
use crate::authz::route::{HostPattern, MethodSet, PathPattern, Rule, RuleId};
use crate::config::diagnostic::Diagnostic;
use crate::config::load::Source;
use crate::config::raw::{Effect, RawPolicyFile, RawRule};
use crate::ratelimit::Limit;
use crate::snapshot::Challenges;

/// What rules refer to, compiled.
pub(super) struct Env<'e> {
    pub upstreams: &'e Upstreams,
    pub authn: &'e Authn,
    pub challenges: &'e Challenges,
    pub rate_limits: &'e BTreeMap<String, Arc<Limit>>,
    pub delegates: &'e BTreeMap<String, Arc<Delegate>>,
    /// What the gateway removes from any request whoever the rules are (the families and
    /// `server.trusted_proxy_headers`).
    pub families: &'e crate::authz::spoofable::Spoofable,
}

/// A field of one rule, for diagnostics: `file:line:col: rules[i].field`.
struct At<'s> {
    file: &'s Source,
    base: String,
}

impl At<'_> {
    fn at(&self, field: &str, message: String) -> Diagnostic {
        Diagnostic::at(
            &self.file.display,
            &self.file.index,
            &format!("{}.{field}", self.base),
            message,
        )
    }

    /// A section's field error, under `prefix` in this rule.
    fn field(&self, prefix: &str, e: crate::config::FieldError) -> Diagnostic {
        let e = e.under(prefix);
        self.at(&e.field, e.message)
    }
}

/// Every rule; the identity header names they set join `spoofable`.
pub(super) fn compile(
    cx: &mut Cx<'_>,
    env: &Env<'_>,
    spoofable: &mut Vec<HeaderName>,
) -> Vec<Rule> {
    let loaded = cx.loaded;
    // Proxy listeners, by name: what they allow needs an upstream.
    let proxy_listeners: Vec<String> = loaded
        .raw
        .listeners
        .iter()
        .filter(|l| l.door == crate::config::raw::RawDoor::Proxy)
        .map(|l| format!("`{}`", l.name))
        .collect();
    let mut rules: Vec<Rule> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut linter = Linter::default();
    for (file, policy) in &loaded.policies {
        let file_name: Arc<str> = file.display.as_str().into();
        // Why: a file emptied by a template or by hand (`rules: []`) passed `check` silently,
        // counted as no file at all, while every request it used to allow was now refused.
        // Regression: tests (it) policy::a_policy_file_without_rules_warns
        if policy.rules.is_empty() {
            let mut d = Diagnostic::at(
                &file.display,
                &file.index,
                "rules",
                "this policy file holds no rules: it decides nothing".to_owned(),
            )
            .warning();
            // A file of comments only has no `rules` line: its first.
            if d.line == 0 {
                (d.line, d.column) = (1, 1);
            }
            cx.diags.push(d);
        }
        for (i, r) in policy.rules.iter().enumerate() {
            let at = At {
                file,
                base: format!("rules[{i}]"),
            };
            // Errors only: a warning about a rule must not drop it.
            let errors_before = cx.errors();
            if r.name.trim().is_empty() {
                cx.diags
                    .push(at.at("name", "rule name must not be empty".into()));
            } else if r.name.chars().any(char::is_control) {
                // Why: a name is printed in logs, metrics labels, `policy list` and `explain`;
                // a newline broke the table, an escape sequence reached the terminal.
                // Regression: tests (it) check golden case rule-name-control
                cx.diags.push(at.at(
                    "name",
                    "rule name must not hold control characters (a newline, an escape)".into(),
                ));
            } else if let Some(other) = names.insert(r.name.clone(), file.display.clone()) {
                cx.diags.push(at.at(
                    "name",
                    format!(
                        "duplicate rule name `{}` (first defined in {other})",
                        r.name
                    ),
                ));
            }
            let rule = rule(
                cx,
                env,
                &at,
                r,
                policy,
                &proxy_listeners,
                spoofable,
                &file_name,
            );
            if let Some(rule) = rule.filter(|_| cx.errors() == errors_before) {
                cx.diags
                    .extend(linter.check(&rule, &rules, |f, m| at.at(f, m)));
                linter.add(rules.len(), &rule);
                rules.push(rule);
            }
        }
    }
    rules
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the rule's whole context"
)]
fn rule(
    cx: &mut Cx<'_>,
    env: &Env<'_>,
    at: &At<'_>,
    r: &RawRule,
    policy: &RawPolicyFile,
    proxy_listeners: &[String],
    spoofable: &mut Vec<HeaderName>,
    file_name: &Arc<str>,
) -> Option<Rule> {
    let loaded = cx.loaded;
    let cfg = &loaded.raw;
    let mut hosts = Vec::new();
    for (j, h) in r.matches.hosts.iter().enumerate() {
        match HostPattern::parse(h) {
            Ok(p) => hosts.push(p),
            Err(e) => cx
                .diags
                .push(at.at(&format!("match.hosts[{j}]"), format!("`{h}`: {e}"))),
        }
    }
    // Why: an empty list matches everything, as a field left out does; written `[]` (a
    // template's empty variable, a list emptied by hand) it reads as "nothing", and an
    // allow rule meant for a few paths then allowed every request it saw.
    // Regression: tests (it) policy::explicit_empty_match_lists_warn
    for (field, empty) in [
        ("hosts", r.matches.hosts.is_empty()),
        ("paths", r.matches.paths.is_empty()),
        ("methods", r.matches.methods.is_empty()),
    ] {
        let path = format!("{}.match.{field}", at.base);
        if empty && at.file.index.has(&path) {
            let d = at.at(
                &format!("match.{field}"),
                format!("an empty list matches every request, as leaving `{field}` out does: this {} rule applies to all {field}", if r.effect == Effect::Deny { "deny" } else { "allow" }),
            );
            cx.diags.push(d.warning());
        }
    }
    let mut paths = Vec::new();
    for (j, p) in r.matches.paths.iter().enumerate() {
        match PathPattern::parse(p) {
            Ok(p) => paths.push(p),
            Err(e) => cx
                .diags
                .push(at.at(&format!("match.paths[{j}]"), format!("`{p}`: {e}"))),
        }
    }
    // Why: only the gRPC door's Checks carry context extensions; at any other door a deny
    // rule asking for them never matches and a later rule decides what it meant to refuse.
    // Regression: tests (it) grpc::context_extensions_select_rules
    // An allow rule asking for them with no envoy_grpc listener at all never matches
    // anywhere (and needs no upstream: see below).
    if r.effect == Effect::Allow
        && !r.matches.context_extensions.is_empty()
        && !cfg
            .listeners
            .iter()
            .any(|l| matches!(l.door, crate::config::raw::RawDoor::EnvoyGrpc(_)))
    {
        cx.diags.push(
            at.at(
                "match.context_extensions",
                format!(
                    "rule `{}` never matches: only the envoy_grpc door's Checks carry context extensions, and no listener is one",
                    r.name
                ),
            )
            .warning(),
        );
    }
    if r.effect == Effect::Deny && !r.matches.context_extensions.is_empty() {
        let elsewhere: Vec<String> = cfg
            .listeners
            .iter()
            .filter(|l| !matches!(l.door, crate::config::raw::RawDoor::EnvoyGrpc(_)))
            .map(|l| format!("`{}`", l.name))
            .collect();
        if !elsewhere.is_empty() {
            cx.diags.push(
                at.at(
                    "match.context_extensions",
                    format!(
                        "deny rule `{}` never matches at {}: only the envoy_grpc door's Checks carry context extensions, so later rules decide those requests",
                        r.name,
                        elsewhere.join(", ")
                    ),
                )
                .warning(),
            );
        }
    }
    // Why: a forward-auth door with a `status_map` serves a peer that turns unmapped
    // statuses into errors (nginx's auth_request: anything but 2xx, 401 and 403 is a 500),
    // and a rule's own denial status was mapped by nobody: the client got 500.
    // Regression: tests (it) doors::status_map_targets_are_refusals
    if let Some(status) = r.denial.as_ref().and_then(|d| d.status)
        && !matches!(status, 401 | 403)
    {
        let unmapped: Vec<String> = cfg
            .listeners
            .iter()
            .filter(|l| match &l.door {
                crate::config::raw::RawDoor::ForwardAuth(d) => {
                    !d.status_map.is_empty() && !d.status_map.contains_key(&status)
                }
                _ => false,
            })
            .map(|l| format!("`{}`", l.name))
            .collect();
        if !unmapped.is_empty() {
            cx.diags.push(
                at.at(
                    "denial.status",
                    format!(
                        "rule `{}` refuses with {status}, which the status_map of {} does not map: a peer that needs the map (nginx's auth_request passes only 2xx, 401 and 403) answers 500; add `{status}: 403` to it",
                        r.name,
                        unmapped.join(", ")
                    ),
                )
                .warning(),
            );
        }
    }
    for (j, m) in r.matches.methods.iter().enumerate() {
        if let Some(meant) = crate::authz::route::misspelled_method(m) {
            cx.diags.push(
                at.at(
                    &format!("match.methods[{j}]"),
                    format!(
                        "`{m}` is no registered method: did you mean `{meant}`? (a misspelled method never matches: a deny rule naming it denies nothing)"
                    ),
                )
                .warning(),
            );
        }
    }
    let methods = match MethodSet::parse(&r.matches.methods) {
        Ok(m) => m,
        Err((j, e)) => {
            cx.diags.push(at.at(
                &format!("match.methods[{j}]"),
                format!("`{}`: {e}", r.matches.methods[j]),
            ));
            MethodSet::default()
        }
    };
    let upstream = match (&r.upstream, r.effect) {
        (Some(u), _) => match env.upstreams.index.get(u.as_str()) {
            Some(&idx) => Some(idx),
            None if env.upstreams.broken.contains(u.as_str()) => None,
            None => {
                cx.diags.push(at.at(
                    "upstream",
                    unknown_name("upstream", u, cfg.upstreams.keys()),
                ));
                None
            }
        },
        // Why: a decision door forwards nothing, so a deployment without a proxy listener needs
        // no upstreams; with one, whatever it allows must go somewhere.
        // Regression: tests (it) doors::decision_only_config_needs_no_upstream
        // Nor does a rule matching `context_extensions`, which only the `envoy_grpc` door
        // carries: no proxy listener ever reaches it.
        // Regression: tests (it) doors::a_rule_only_the_grpc_door_matches_needs_no_upstream
        (None, Effect::Allow)
            if !proxy_listeners.is_empty() && r.matches.context_extensions.is_empty() =>
        {
            cx.diags.push(at.at(
                "upstream",
                format!(
                    "an allow rule needs an upstream: the proxy listener(s) {} forward what it allows (decision doors alone would need none)",
                    proxy_listeners.join(", ")
                ),
            ));
            None
        }
        (None, _) => None,
    };
    let authenticators = authenticators(cx, env, at, r);
    if r.effect == Effect::Allow && r.authenticators.is_empty() && !r.anonymous {
        cx.diags.push(at.at(
            "authenticators",
            "an allow rule must list its authenticators or set `anonymous: true`".into(),
        ));
    }
    let query: Vec<Box<str>> = authenticators
        .iter()
        .filter_map(|&i| env.authn.at(i))
        .flat_map(|a| a.query_sources().map(Into::into).collect::<Vec<Box<str>>>())
        .collect();
    let query_credentials = (!query.is_empty()).then(|| query.into());
    // Why: `scopes:` with no value (a template's empty variable) read as "no requirement",
    // and the rule let every authenticated principal through. A requirement written must
    // say what it requires. Regression: tests (it) policy::a_requirement_written_empty_is_refused
    let rq = &r.require;
    // `require:` alone, `{}` or `{mtls: false}`: written, requiring nothing. (By its value:
    // a YAML alias's fields are not in the file's index.)
    let written = |field: &str| at.file.index.has(&format!("{}.require.{field}", at.base));
    if at.file.index.has(&format!("{}.require", at.base))
        && *rq == crate::config::raw::RawRequire::default()
    {
        cx.diags.push(at.at(
            "require",
            "`require` as written requires nothing: write what it requires, or remove it".into(),
        ));
    }
    for (field, empty) in [
        ("scopes", rq.scopes.is_none()),
        ("roles", rq.roles.is_none()),
        ("claims", rq.claims.is_empty()),
        ("kind", rq.kind.is_none()),
        ("networks", rq.networks.is_empty()),
    ] {
        if empty && written(field) {
            cx.diags.push(at.at(
                &format!("require.{field}"),
                format!("`require.{field}` is written with nothing in it, which would require nothing: write what it requires, or remove it"),
            ));
        }
    }
    let require = match crate::authz::require::Requirements::compile(&r.require) {
        Ok(q) => q.with_scope_challenge(env.challenges),
        Err(es) => {
            cx.diags
                .extend(es.into_iter().map(|e| at.field("require", e)));
            crate::authz::require::Requirements::default()
        }
    };
    if r.effect == Effect::Deny && r.require != crate::config::raw::RawRequire::default() {
        cx.diags.push(at.at(
            "require",
            "requirements apply to allow rules; a deny rule refuses whatever it matches".into(),
        ));
    }
    if r.anonymous && require.needs_principal() {
        cx.diags.push(at.at(
            "anonymous",
            "an anonymous request has no scopes, roles, claims or kind: drop `anonymous` or those requirements".into(),
        ));
    }
    let identity = identity(cx, at, r, spoofable);
    let when = match (&r.when, r.effect) {
        (None, _) => None,
        (Some(_), Effect::Deny) => {
            cx.diags.push(at.at(
                "when",
                "`when` applies to allow rules; a deny rule refuses whatever it matches".into(),
            ));
            None
        }
        (Some(src), Effect::Allow) => match crate::authz::expr::Condition::compile(
            src,
            crate::authz::expr::Budget::from(&cfg.policies.conditions),
        ) {
            Ok(c) => Some(c),
            Err(m) => {
                cx.diags.push(at.at("when", m));
                None
            }
        },
    };
    // Why: `params.nosuch` (a name no path pattern of the rule binds) passed `check` and
    // failed every request (fail closed: an outage `check` had called ok).
    // Regression: tests (it) check golden case params-unbound
    if let Some(named) = when.as_ref().and_then(|w| w.params_named()) {
        for name in named {
            // Bound by one pattern only is fine: `has(params.id)` may guard the read.
            let unbound = !paths.iter().any(|p| p.names().any(|n| n == name));
            if unbound {
                let bound: Vec<String> = paths
                    .iter()
                    .flat_map(|p| p.names())
                    .map(|n| format!("`{n}`"))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                cx.diags.push(at.at(
                    "when",
                    format!(
                        "`params.{name}`: no path pattern of the rule binds `{{{name}}}` (they bind {})",
                        if bound.is_empty() { "none".to_owned() } else { bound.join(", ") }
                    ),
                ));
            }
        }
    }
    if let Some(w) = &when {
        hidden_header_reads(
            cx,
            at,
            w,
            env.families,
            !cfg.server.trusted_proxies.is_empty(),
        );
    }
    let case_insensitive = policy.case_insensitive_paths
        || r.upstream
            .as_ref()
            .and_then(|u| cfg.upstreams.get(u))
            .is_some_and(|u| u.case_insensitive_paths);
    // Why: such a rule matches `/Secret/x` as `/secret/x`, but its condition compares the
    // path as sent: `!request.path.startsWith('/secret')` let `/Secret/x` through to an
    // upstream that serves it as `/secret/x`. Lowering the path for the condition broke
    // conditions written in the app's own case, so it is said here instead.
    // Regression: tests (it) paths::case_insensitive_paths_keep_requirements_on_case_variants
    if case_insensitive && when.as_ref().is_some_and(|w| w.reads_path()) {
        cx.diags.push(
            at.at(
                "when",
                "reads `request.path`, which keeps the case the client sent, while the rule's upstream ignores case (`case_insensitive_paths`): `/Secret/x` does not start with `/secret` but is served as it. Decide on paths with `match.paths` (a deny rule matches in any case) rather than in the condition".into(),
            )
            .warning(),
        );
    } else if when.as_ref().is_some_and(|w| w.reads_path())
        && r.matches
            .paths
            .iter()
            .any(|p| p != "/" && !p.ends_with("**"))
    {
        // Why: an exact pattern matches `/x` and `/x/` alike, but the condition compares the
        // path as sent: `request.path != '/api/admin'` let `/api/admin/` through.
        // Regression: tests (it) policy::check_warns_about_rules_that_can_never_match
        cx.diags.push(
            at.at(
                "when",
                "reads `request.path`, which keeps a trailing slash the client sent, while the rule's exact paths match `/x/` as `/x`: `/api/admin/` is not `/api/admin` but is served as it. Decide on paths with `match.paths` rather than in the condition".into(),
            )
            .warning(),
        );
    }
    let denial =
        r.denial
            .as_ref()
            .and_then(|raw| match crate::authz::denial::Denial::compile(raw) {
                Ok(d) => Some(Arc::new(d)),
                Err(es) => {
                    cx.diags
                        .extend(es.into_iter().map(|e| at.field("denial", e)));
                    None
                }
            });
    let rate_limit = named(
        cx,
        at,
        "rate_limit",
        "rate limit",
        r.rate_limit.as_deref(),
        env.rate_limits,
        cfg.rate_limits.keys(),
    );
    let guard = named(
        cx,
        at,
        "guard",
        "rate limit",
        r.guard.as_deref(),
        env.rate_limits,
        cfg.rate_limits.keys(),
    );
    if rate_limit
        .as_ref()
        .is_some_and(|l| l.count == crate::config::raw::RawCount::Failures)
    {
        cx.diags.push(at.at(
            "rate_limit",
            "this limit counts failures (`count: failures`): name it as the rule's `guard`".into(),
        ));
    }
    if guard
        .as_ref()
        .is_some_and(|l| l.count != crate::config::raw::RawCount::Failures)
    {
        cx.diags.push(at.at(
            "guard",
            "a guard counts refusals: its limit needs `count: failures`".into(),
        ));
    }
    let delegate = named(
        cx,
        at,
        "delegate",
        "delegate",
        r.delegate.as_deref(),
        env.delegates,
        cfg.delegates.keys(),
    );
    // Why: a preflight answered for a method the rule never matches tells a browser the
    // request is welcome, and the request itself then meets another rule (or the default
    // deny). Regression: tests (it) edge::cors_methods_the_rule_never_matches_warn
    if let Some(cors) = &r.cors
        && !r.matches.methods.is_empty()
    {
        let matched = |m: &str| {
            r.matches.methods.iter().any(|x| x == m)
                || (m == "HEAD" && r.matches.methods.iter().any(|x| x == "GET"))
        };
        for (i, m) in cors.allowed_methods.iter().enumerate() {
            if !matched(m) {
                cx.diags.push(
                    at.at(
                        &format!("cors.allowed_methods[{i}]"),
                        format!("`{m}` is not among the rule's `match.methods`: a preflight would allow what this rule never decides"),
                    )
                    .warning(),
                );
            }
        }
    }
    let edge = match crate::authz::edge::Edge::compile(
        r.upgrade.as_ref(),
        r.reauthorize_every,
        r.cors.as_ref(),
        &r.matches.methods,
    ) {
        Ok(e) => e.map(Arc::new),
        Err(es) => {
            cx.diags.extend(es.into_iter().map(|e| at.field("", e)));
            None
        }
    };
    // Why: an upgrade is sent upstream as HTTP/1.1; an `h2c` upstream (HTTP/2 with prior
    // knowledge) cannot take one, so every upgrade got 502 and counted against the healthy
    // endpoints until they were ejected. Regression: tests (it) check golden case upgrade-to-h2c
    if r.upgrade.is_some()
        && r.upstream
            .as_ref()
            .and_then(|u| cfg.upstreams.get(u))
            .is_some_and(|u| u.protocol == Some(crate::config::raw::RawProtocol::H2c))
    {
        cx.diags.push(at.at(
            "upgrade",
            "the rule's upstream speaks `h2c` (HTTP/2 only); an upgrade is relayed over HTTP/1.1".into(),
        ));
    }
    // Why: a browser sends a page's cookies with a WebSocket it opens to any site, and only
    // the `Origin` header tells the page's site. A rule relaying WebSockets on a cookie
    // credential, without `cors` to name the origins, let any site's page open them in the
    // user's name (cross-site WebSocket hijacking), and `check` said nothing.
    // Regression: tests (it) check::cookie_websockets_without_cors_warn
    if r.effect == Effect::Allow
        && r.cors.is_none()
        && r.upgrade.as_ref().is_some_and(|u| {
            u.protocols
                .iter()
                .any(|p| p.eq_ignore_ascii_case("websocket"))
        })
        && let Some(cookie) = authenticators.iter().find_map(|&i| {
            env.authn.at(i)?.sources.iter().find_map(|s| match s {
                crate::authn::credential::CredentialSource::Cookie(c) => Some(c.clone()),
                _ => None,
            })
        })
    {
        cx.diags.push(
            at.at(
                "upgrade",
                format!(
                    "WebSockets authenticated by cookie `{cookie}` from any origin: a browser sends the cookie with a WebSocket any site's page opens (cross-site WebSocket hijacking); add `cors` with the origins allowed to open them"
                ),
            )
            .warning(),
        );
    }
    // Why: a browser's script sends a token in a header only after a preflight allows that
    // header: a rule with `cors` whose credential is `Authorization` (or another header) and
    // whose `allowed_headers` left it out refused every preflight (403
    // `cors_header_not_allowed`), and no browser could ever call it. `check` said nothing.
    // Regression: tests (it) check::cors_that_refuses_the_rules_credential_header_warns
    if r.effect == Effect::Allow
        && let Some(cors) = &r.cors
    {
        let allowed = |name: &str| {
            cors.allowed_headers
                .iter()
                .any(|h| h.trim().eq_ignore_ascii_case(name))
        };
        let mut missing: Vec<String> = Vec::new();
        // Warned only when a page can use none of the rule's credentials: a cookie, a query
        // parameter, a client certificate (no source: mTLS, trusted headers) or an allowed
        // header is one it can; the others may be for servers, which send no preflight.
        let mut a_page_can = false;
        for &i in &authenticators {
            let sources = env.authn.at(i).map_or(&[][..], |a| &a.sources[..]);
            a_page_can |= sources.is_empty();
            for s in sources {
                let Some(name) = s.header().map(HeaderName::as_str) else {
                    a_page_can = true;
                    continue;
                };
                if allowed(name) {
                    a_page_can = true;
                } else if !missing.iter().any(|m| m == name) {
                    missing.push(name.to_owned());
                }
            }
        }
        if !missing.is_empty() && !a_page_can {
            cx.diags.push(
                at.at(
                    "cors.allowed_headers",
                    format!(
                        "leaves out {}, which the rule's authenticators read the credential from: a browser's preflight asking to send it is refused (403 `cors_header_not_allowed`), so no page can call the rule with it; add it to `allowed_headers`",
                        missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                    ),
                )
                .warning(),
            );
        }
    }
    // Why: the hash key is the header as the upstream receives it, and a credential the
    // rule's authenticator strips is not there: `hash: {header: authorization}` balanced
    // every request of such a rule round robin, and `check` said nothing.
    // Regression: tests (it) check::hashing_on_a_stripped_credential_warns
    if let Some(u) = upstream.and_then(|i| env.upstreams.list.get(i))
        && let Some(crate::upstream::HashOn::Header(h)) = &u.hash
        && let Some(a) = authenticators
            .iter()
            .filter_map(|&i| env.authn.at(i))
            .find(|a| a.strip && a.sources.iter().any(|s| s.header() == Some(h)))
    {
        cx.diags.push(
            at.at(
                "upstream",
                format!(
                    "upstream `{}` hashes on `{h}`, which authenticator `{}` strips before forwarding: this rule's requests carry no key and are balanced as if unhashed; hash on `principal` (or an identity header) instead",
                    u.name, a.name
                ),
            )
            .warning(),
        );
    }
    // Why: a tunnel or long response behind Envoy, nginx, Traefik or Caddy is theirs to
    // relay; the door decides once, at the upgrade, and enforces none of these. A config
    // with decision doors alone passed `check` as if they held.
    // Regression: tests (it) check::stream_bounds_are_the_proxy_doors
    if r.effect == Effect::Allow && proxy_listeners.is_empty() && r.reauthorize_every.is_some() {
        cx.diags.push(
            at.at(
                "reauthorize_every",
                "re-checks streams the proxy door relays; with decision doors only, the peer (Envoy, nginx, Traefik, Caddy) relays them and the door decides once, at the request".into(),
            )
            .warning(),
        );
    }
    if r.effect == Effect::Deny {
        // Why: a deny rule never opens a tunnel, and a preflight answered for it would tell a
        // browser that a request it refuses is welcome.
        // Nor does it authenticate anyone, set identity headers or reach an upstream: an
        // `authenticators` or `upstream` there read as if it narrowed the refusal, and did
        // nothing (found by an outside tester of `check`).
        // Regression: tests (it) check::invalid_configs_print_expected_diagnostics (deny-rule-options)
        for (set, field) in [
            (r.upgrade.is_some(), "upgrade"),
            (r.reauthorize_every.is_some(), "reauthorize_every"),
            (r.cors.is_some(), "cors"),
            (!r.authenticators.is_empty(), "authenticators"),
            (r.anonymous, "anonymous"),
            (r.upstream.is_some(), "upstream"),
            (!r.identity_headers.is_empty(), "identity_headers"),
            (r.timeouts.is_some(), "timeouts"),
        ] {
            if set {
                cx.diags.push(at.at(
                    field,
                    format!(
                        "`{field}` applies to allow rules; a deny rule refuses whatever it matches"
                    ),
                ));
            }
        }
        if r.delegate.is_some() {
            cx.diags.push(at.at(
                "delegate",
                "a delegate is asked about the requests an allow rule would let through".into(),
            ));
        }
        if r.rate_limit.is_some() {
            cx.diags.push(at.at(
                "rate_limit",
                "a rate limit applies to the requests an allow rule lets through".into(),
            ));
        }
        if r.timeouts.is_some() {
            cx.diags.push(at.at(
                "timeouts",
                "upstream timeouts apply to the requests an allow rule forwards".into(),
            ));
        }
    }
    if let Some(t) = &r.timeouts {
        // Why: a zero timeout passed `check` and failed every request (504), or cut every
        // streamed body at once. Regression: tests (it) check golden case zero-timeouts
        for (field, value) in [
            ("timeouts.connect", t.connect),
            ("timeouts.response", t.response),
            ("timeouts.idle", t.idle),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                cx.diags.push(at.at(field, "must be more than 0".into()));
            }
        }
    }
    Some(Rule {
        context: r
            .matches
            .context_extensions
            .iter()
            .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
            .collect(),
        id: RuleId(r.name.as_str().into()),
        file: Arc::clone(file_name),
        hosts,
        paths,
        methods,
        effect: r.effect,
        upstream,
        authenticators: authenticators.into(),
        anonymous: r.anonymous,
        query_credentials,
        require,
        identity,
        when,
        denial,
        rate_limit,
        guard,
        delegate,
        case_insensitive,
        timeouts: r.timeouts.as_ref().map(|t| {
            Arc::new(crate::authz::route::RouteTimeouts {
                connect: t.connect,
                response: t.response,
                idle: t.idle,
            })
        }),
        edge,
    })
}

/// The rule's authenticators by index; two reading one place are a warning.
fn authenticators(cx: &mut Cx<'_>, env: &Env<'_>, at: &At<'_>, r: &RawRule) -> Vec<usize> {
    let cfg = &cx.loaded.raw;
    let mut out = Vec::with_capacity(r.authenticators.len());
    let mut found = Vec::new();
    for (j, name) in r.authenticators.iter().enumerate() {
        match env.authn.position(name) {
            Some(i) if out.contains(&i) => found.push(at.at(
                &format!("authenticators[{j}]"),
                format!("authenticator `{name}` listed twice"),
            )),
            Some(i) => out.push(i),
            None if cfg.authenticators.contains_key(name) => {}
            None => found.push(at.at(
                &format!("authenticators[{j}]"),
                unknown_name("authenticator", name, cfg.authenticators.keys()),
            )),
        }
    }
    // Two accepted authenticators reading one place: the later one never decides a credential
    // found there (the first refuses what it cannot verify).
    for (j, &b) in out.iter().enumerate() {
        let Some(later) = env.authn.at(b) else {
            continue;
        };
        for earlier in out[..j].iter().filter_map(|&a| env.authn.at(a)) {
            if let Some(s) = later.sources.iter().find(|s| earlier.sources.contains(s)) {
                found.push(
                    at.at(
                        &format!("authenticators[{j}]"),
                        format!(
                            "`{}` reads the same credential ({}) as `{}` before it: a credential there is decided by `{}` alone",
                            later.name,
                            s.describe(),
                            earlier.name,
                            earlier.name
                        ),
                    )
                    .warning(),
                );
            }
        }
    }
    cx.diags.extend(found);
    out
}

/// The rule's identity headers: its own checked alone (so a global mistake is reported once),
/// then merged over the global ones; every name joins `spoofable`.
fn identity(
    cx: &mut Cx<'_>,
    at: &At<'_>,
    r: &RawRule,
    spoofable: &mut Vec<HeaderName>,
) -> IdentityHeaders {
    let loaded = cx.loaded;
    if let Err(es) = IdentityHeaders::compile(
        r.identity_headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?))),
    ) {
        cx.diags
            .extend(es.into_iter().map(|e| at.field("identity_headers", e)));
    }
    for k in r.identity_headers.keys() {
        if super::authn::is_request_id_header(cx, k) {
            cx.diags.push(at.at(
                &format!("identity_headers.{k}"),
                format!("`{k}` is `server.request_id_header`, which the gateway sets; choose another name"),
            ));
        }
    }
    if let Some(a) = &loaded.raw.identity_assertion {
        let header = a
            .header
            .as_deref()
            .unwrap_or(crate::authz::assertion::DEFAULT_HEADER);
        let fold = crate::authz::identity::fold_name(header);
        for k in r.identity_headers.keys() {
            if crate::authz::identity::fold_name(k) == fold {
                cx.diags.push(at.at(
                    &format!("identity_headers.{k}"),
                    format!("`{k}` is the identity assertion's header: choose another name"),
                ));
            }
        }
    }
    let mut merged: Vec<(String, &str)> = loaded
        .raw
        .identity_headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
        .collect();
    for (k, v) in &r.identity_headers {
        let k = k.to_ascii_lowercase();
        // The rule's spelling replaces the global one it folds to (`x_user` over `x-user`).
        let fold = crate::authz::identity::fold_name(&k);
        merged.retain(|(n, _)| crate::authz::identity::fold_name(n) != fold);
        if let Some(v) = v {
            merged.push((k, v.as_str()));
        }
    }
    let identity =
        IdentityHeaders::compile(merged.iter().map(|(k, v)| (k.as_str(), *v))).unwrap_or_default();
    spoofable.extend(identity.names().cloned());
    for k in r.identity_headers.keys() {
        if let Ok(h) = crate::authz::identity::check_name(k) {
            spoofable.push(h);
        }
    }
    identity
}

/// A named thing a rule refers to (a rate limit, a delegate), or its diagnostic.
fn named<'k, T>(
    cx: &mut Cx<'_>,
    at: &At<'_>,
    field: &str,
    kind: &str,
    name: Option<&str>,
    compiled: &BTreeMap<String, Arc<T>>,
    configured: impl Iterator<Item = &'k String> + Clone,
) -> Option<Arc<T>> {
    let name = name?;
    if let Some(t) = compiled.get(name) {
        return Some(Arc::clone(t));
    }
    // Configured but broken: already reported at its definition.
    if !configured.clone().any(|k| k == name) {
        cx.diags
            .push(at.at(field, unknown_name(kind, name, configured)));
    }
    None
}

/// Warns about a condition reading a header `request.headers` never holds, or holds only
/// from a trusted proxy: one the gateway removes or rewrites (see `authz::spoofable`).
///
/// Why: such a read fails closed for every request, or for every request from anyone but a
/// trusted proxy (`request.headers['x-forwarded-for']`, `['cf-access-authenticated-user-
/// email']` without `trusted_proxy_headers`), and `check` said nothing.
/// Regression: tests (it) policy::a_condition_reading_a_removed_header_is_a_warning
fn hidden_header_reads(
    cx: &mut Cx<'_>,
    at: &At<'_>,
    when: &crate::authz::expr::Condition,
    families: &crate::authz::spoofable::Spoofable,
    has_trusted_proxies: bool,
) {
    use crate::authz::expr::Keys;
    use crate::authz::spoofable::{Family, family};
    let Keys::Some(keys) = &when.reads().headers else {
        return;
    };
    for key in keys {
        let Ok(name) = HeaderName::from_bytes(key.as_bytes()) else {
            continue;
        };
        // The view leaves out what `is_doomed` removes and the forwarding family the
        // gateway rewrites (`expr::hidden`).
        let kind = family(&crate::authz::spoofable::dashed(key));
        let forwarding = kind == Some(Family::Forwarding);
        let why = if forwarding || families.is_doomed(&name, true) {
            if kind == Some(Family::Infrastructure) && !key.contains(['_', '.']) {
                "the gateway removes it unless a trusted proxy sends it and `server.trusted_proxy_headers` names it, so the condition fails for every request"
            } else {
                "the gateway removes or rewrites it, so the condition fails for every request"
            }
        } else if families.is_doomed(&name, false) && !has_trusted_proxies {
            "only a trusted proxy's copy is kept, and `server.trusted_proxies` names none, so the condition fails for every request"
        } else {
            continue;
        };
        let hint = if forwarding {
            " (decide on the client address with `require.networks`)"
        } else {
            ""
        };
        cx.diags.push(
            at.at(
                "when",
                format!("reads `request.headers['{key}']`: {why}{hint}"),
            )
            .warning(),
        );
    }
}
