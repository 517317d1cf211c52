//! Raw config → [`Snapshot`]. Collects every problem before giving up, so one `check` run
//! shows them all; a config with any error never becomes a snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use http::HeaderName;

use super::diagnostic::Diagnostic;
use super::load::Loaded;
use super::raw::Effect;
use crate::authz::identity::IdentityHeaders;
use crate::authz::route::{HostPattern, MethodSet, PathPattern, RouteTable, Rule, RuleId};
use crate::authz::spoofable::{NamePattern, Spoofable};
use crate::snapshot::{ListenerSettings, ServerSettings, Snapshot};
use crate::tls;
use crate::upstream::Upstream;

/// Compiles what was loaded; `previous` lends state worth keeping (upstream pools).
/// Returns the snapshot and its warnings, or every error (and warning) found.
pub fn compile(
    loaded: &Loaded,
    previous: Option<&Snapshot>,
    clock: crate::clock::Clock,
) -> Result<(Snapshot, Vec<Diagnostic>), Vec<Diagnostic>> {
    let mut diags = loaded.errors.clone();
    let cfg = &loaded.raw;
    let src = &loaded.config;
    let at = |path: &str, msg: String| Diagnostic::at(&src.display, &src.index, path, msg);
    let mut watched: Vec<PathBuf> = vec![loaded.config.path.clone(), loaded.policy_dir.clone()];
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    digest.update(src.text.as_bytes());

    // Listeners.
    if cfg.listeners.is_empty() {
        diags.push(at("listeners", "at least one listener is required".into()));
    }
    let mut listeners = Vec::with_capacity(cfg.listeners.len());
    let mut names = HashMap::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(first) = names.insert(l.name.as_str(), i) {
            diags.push(at(
                &format!("listeners[{i}].name"),
                format!(
                    "duplicate listener name `{}` (also listeners[{first}])",
                    l.name
                ),
            ));
        }
        let tls = match &l.tls {
            None => None,
            Some(t) if t.certificates.is_empty() => {
                diags.push(at(
                    &format!("listeners[{i}].tls.certificates"),
                    "at least one certificate is required".into(),
                ));
                None
            }
            Some(t) => {
                let entries: Vec<tls::server::CertEntry> = t
                    .certificates
                    .iter()
                    .map(|c| tls::server::CertEntry {
                        cert: loaded.base_dir.join(&c.cert),
                        key: loaded.base_dir.join(&c.key),
                        server_names: c.server_names.clone(),
                    })
                    .collect();
                for e in &entries {
                    for p in [&e.cert, &e.key] {
                        if let Ok(bytes) = std::fs::read(p) {
                            digest.update(&bytes);
                        }
                        watched.push(p.clone());
                    }
                }
                let mut verifier = |ca: &crate::config::raw::RawClientAuth, field: String| {
                    let path = loaded.base_dir.join(&ca.ca_file);
                    watched.push(path.clone());
                    match tls::server::client_verifier(&path, ca.required) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            diags.push(at(&field, e.to_string()));
                            None
                        }
                    }
                };
                let listener_auth = t
                    .client_auth
                    .as_ref()
                    .and_then(|ca| verifier(ca, format!("listeners[{i}].tls.client_auth.ca_file")));
                let per_entry: Vec<_> = t
                    .certificates
                    .iter()
                    .enumerate()
                    .map(|(j, c)| match &c.client_auth {
                        Some(ca) => verifier(
                            ca,
                            format!("listeners[{i}].tls.certificates[{j}].client_auth.ca_file"),
                        ),
                        None => listener_auth.clone(),
                    })
                    .collect();
                match tls::server::listener_tls(&entries, l.http2, &per_entry) {
                    Ok(c) => Some(Arc::new(c)),
                    Err((j, e)) => {
                        diags.push(at(
                            &format!("listeners[{i}].tls.certificates[{j}].{}", e.field()),
                            e.to_string(),
                        ));
                        None
                    }
                }
            }
        };
        let door = compile_door(&l.door, &mut |field: &str, m: String| {
            diags.push(at(&format!("listeners[{i}].door.{field}"), m));
        });
        listeners.push(ListenerSettings {
            name: l.name.as_str().into(),
            address: l.address,
            tls,
            http2: l.http2,
            door,
        });
    }

    // Limits.
    let s = &cfg.server;
    if s.max_header_bytes < 8192 {
        diags.push(at(
            "server.max_header_bytes",
            "must be at least 8192".into(),
        ));
    }
    if !(1024..=65535).contains(&s.max_target_bytes) {
        diags.push(at(
            "server.max_target_bytes",
            "must be between 1024 and 65535".into(),
        ));
    }
    if s.max_connections == 0 {
        diags.push(at("server.max_connections", "must be at least 1".into()));
    }
    let request_id_header = match HeaderName::from_bytes(s.request_id_header.as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            diags.push(at(
                "server.request_id_header",
                format!("`{}` is not a valid header name", s.request_id_header),
            ));
            HeaderName::from_static("x-request-id")
        }
    };
    let mut from_trusted = Vec::with_capacity(s.trusted_proxy_headers.len());
    for (i, h) in s.trusted_proxy_headers.iter().enumerate() {
        match NamePattern::parse(h) {
            Ok(p) => from_trusted.push(p),
            Err(m) => diags.push(at(&format!("server.trusted_proxy_headers[{i}]"), m)),
        }
    }
    if s.send_timeout.is_zero() {
        diags.push(at("server.send_timeout", "must be more than 0".into()));
    }
    if s.http2.window.is_zero() {
        diags.push(at("server.http2.window", "must be more than 0".into()));
    }
    let server = ServerSettings {
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        send_timeout: s.send_timeout,
        max_header_bytes: s.max_header_bytes,
        max_target_bytes: s.max_target_bytes,
        max_headers: s.max_headers,
        max_body_bytes: s.max_body_bytes,
        max_concurrent_streams: s.max_concurrent_streams,
        shutdown_grace: s.shutdown_grace,
        trusted_proxies: s.trusted_proxies.iter().map(|n| n.0).collect(),
        request_id_header,
        http2: crate::snapshot::Http2Limits {
            max_resets: s.http2.max_resets,
            max_control_frames: s.http2.max_control_frames,
            window: s.http2.window,
        },
    };

    // Upstreams.
    let mut upstreams = Vec::with_capacity(cfg.upstreams.len());
    let mut upstream_index = HashMap::new();
    // Upstreams that exist but failed to compile: rules naming them are not also reported.
    let mut broken_upstreams = std::collections::HashSet::new();
    for (name, raw) in &cfg.upstreams {
        let prev = previous.and_then(|p| p.upstreams.iter().find(|u| *u.name == **name));
        if let Some(ca) = &raw.ca_file {
            watched.push(loaded.base_dir.join(ca));
        }
        match Upstream::build(name, raw, &loaded.base_dir, prev.map(|u| &**u)) {
            Ok(u) => {
                upstream_index.insert(name.as_str(), upstreams.len());
                upstreams.push(Arc::new(u));
            }
            Err(e) => {
                broken_upstreams.insert(name.as_str());
                diags.push(at(&format!("upstreams.{name}.{}", e.field), e.message));
            }
        }
    }

    // Authenticators.
    let authn = match crate::authn::Authn::compile(
        &cfg.authenticators,
        &cfg.authn,
        &loaded.base_dir,
        previous.map(|p| &p.authn),
        &mut watched,
    ) {
        Ok(a) => a,
        Err(es) => {
            for e in es {
                diags.push(match e {
                    crate::authn::CompileError::Field(field, msg) => at(&field, msg),
                    crate::authn::CompileError::File(d) => d,
                });
            }
            crate::authn::Authn::default()
        }
    };
    // Why: the development key pair ships with Portcullis, private half included; a gateway
    // trusting it accepts tokens anyone can mint. Regression: tests (it) check::*
    for (name, a) in &cfg.authenticators {
        let crate::config::raw::RawAuthenticator::Jwt(j) = a else {
            continue;
        };
        for (i, p) in j.providers.iter().enumerate() {
            for (k, key) in p.keys.iter().enumerate() {
                let crate::config::raw::RawKey::PemFile(f) = key else {
                    continue;
                };
                let published = std::fs::read_to_string(loaded.base_dir.join(&f.path))
                    .is_ok_and(|t| t.trim() == PUBLISHED_DEV_KEY.trim());
                if published {
                    diags.push(
                        at(
                            &format!("authenticators.{name}.jwt.providers[{i}].keys[{k}]"),
                            "this is the development key published with Portcullis: anyone can mint tokens it verifies; replace it before deploying".into(),
                        )
                        .warning(),
                    );
                }
            }
        }
    }
    // mTLS authenticators name listeners that ask for client certificates.
    let asks_certs = |name: &str| {
        cfg.listeners.iter().any(|l| {
            l.name == name
                && l.tls.as_ref().is_some_and(|t| {
                    t.client_auth.is_some()
                        || t.certificates.iter().any(|c| c.client_auth.is_some())
                })
        })
    };
    for (name, a) in &cfg.authenticators {
        let crate::config::raw::RawAuthenticator::Mtls(m) = a else {
            continue;
        };
        for (j, l) in m.listeners.iter().enumerate() {
            if !asks_certs(l) {
                diags.push(at(
                    &format!("authenticators.{name}.mtls.listeners[{j}]"),
                    format!("no listener `{l}` with `tls.client_auth`"),
                ));
            }
        }
        if m.listeners.is_empty() && !cfg.listeners.iter().any(|l| asks_certs(&l.name)) {
            diags.push(
                at(
                    &format!("authenticators.{name}"),
                    "no listener asks for client certificates (`tls.client_auth`): this authenticator never finds one".into(),
                )
                .warning(),
            );
        }
    }
    // The signed identity assertion; its key files are watched (a rotation reloads).
    let assertion = cfg.identity_assertion.as_ref().and_then(|raw| {
        watched.push(loaded.base_dir.join(&raw.key_file));
        watched.extend(
            raw.retired_keys
                .iter()
                .map(|r| loaded.base_dir.join(&r.key_file)),
        );
        match crate::authz::assertion::Assertion::compile(raw, &loaded.base_dir) {
            Ok(a) => Some(a),
            Err(es) => {
                for (f, m) in es {
                    diags.push(at(&format!("identity_assertion.{f}"), m));
                }
                None
            }
        }
    });
    for p in &watched {
        if p.is_file()
            && let Ok(bytes) = std::fs::read(p)
        {
            digest.update(&bytes);
        }
    }
    let challenges = match crate::snapshot::Challenges::new(&cfg.authn.realm) {
        Some(c) => c,
        None => {
            diags.push(at(
                "authn.realm",
                "must be visible ASCII characters and spaces".into(),
            ));
            crate::snapshot::Challenges::fallback()
        }
    };

    // Identity headers: the global ones; rules merge their own over them.
    if let Err(es) = IdentityHeaders::compile(
        cfg.identity_headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        for (name, m) in es {
            diags.push(at(&format!("identity_headers.{name}"), m));
        }
    }
    let mut spoofable_names: Vec<HeaderName> = authn.spoofable_names().to_vec();
    spoofable_names.extend(assertion.iter().map(|a| a.header.clone()));

    // Rate limits; an unchanged definition keeps the running limit's state.
    let mut rate_limits = std::collections::BTreeMap::new();
    for (name, raw) in &cfg.rate_limits {
        let before = previous.and_then(|p| p.rate_limits.get(name));
        match crate::ratelimit::Limit::compile(name, raw, before, &clock) {
            Ok(l) => {
                rate_limits.insert(name.clone(), l);
            }
            Err((field, m)) => diags.push(at(&format!("rate_limits.{name}.{field}"), m)),
        }
    }

    // Delegates; an unchanged definition keeps its answer cache.
    let mut delegates = std::collections::BTreeMap::new();
    for (name, raw) in &cfg.delegates {
        let before = previous.and_then(|p| p.delegates.get(name)).map(|d| &**d);
        match crate::authz::delegate::Delegate::compile(name, raw, before) {
            Ok(d) => {
                spoofable_names.extend(d.header_names().iter().cloned());
                delegates.insert(name.clone(), Arc::new(d));
            }
            Err((field, m)) => diags.push(at(&format!("delegates.{name}.{field}"), m)),
        }
    }

    // Proxy listeners, by name: what they allow needs an upstream.
    let proxy_listeners: Vec<String> = cfg
        .listeners
        .iter()
        .filter(|l| l.door == crate::config::raw::RawDoor::Proxy)
        .map(|l| format!("`{}`", l.name))
        .collect();

    // Rules, files in name order, rules in file order.
    let mut lint_buckets: HashMap<String, Vec<usize>> = HashMap::new();
    let mut lint_any: Vec<usize> = Vec::new();
    let mut rules = Vec::new();
    let mut rule_names: HashMap<String, String> = HashMap::new();
    for (file, policy) in &loaded.policies {
        digest.update(file.display.as_bytes());
        digest.update(file.text.as_bytes());
        let file_name: Arc<str> = file.display.as_str().into();
        for (i, r) in policy.rules.iter().enumerate() {
            let base = format!("rules[{i}]");
            let at = |field: &str, msg: String| {
                Diagnostic::at(&file.display, &file.index, &format!("{base}.{field}"), msg)
            };
            // Errors only: a warning about a rule must not drop it.
            let errors_before = diags.iter().filter(|d| d.is_error()).count();
            if r.name.trim().is_empty() {
                diags.push(at("name", "rule name must not be empty".into()));
            } else if let Some(other) = rule_names.insert(r.name.clone(), file.display.clone()) {
                diags.push(at(
                    "name",
                    format!(
                        "duplicate rule name `{}` (first defined in {other})",
                        r.name
                    ),
                ));
            }
            let mut hosts = Vec::new();
            for (j, h) in r.matches.hosts.iter().enumerate() {
                match HostPattern::parse(h) {
                    Ok(p) => hosts.push(p),
                    Err(e) => diags.push(at(&format!("match.hosts[{j}]"), format!("`{h}`: {e}"))),
                }
            }
            let mut paths = Vec::new();
            for (j, p) in r.matches.paths.iter().enumerate() {
                match PathPattern::parse(p) {
                    Ok(p) => paths.push(p),
                    Err(e) => diags.push(at(&format!("match.paths[{j}]"), format!("`{p}`: {e}"))),
                }
            }
            let methods = match MethodSet::parse(&r.matches.methods) {
                Ok(m) => m,
                Err((j, e)) => {
                    diags.push(at(
                        &format!("match.methods[{j}]"),
                        format!("`{}`: {e}", r.matches.methods[j]),
                    ));
                    MethodSet::default()
                }
            };
            let upstream = match (&r.upstream, r.effect) {
                (Some(u), _) => match upstream_index.get(u.as_str()) {
                    Some(&idx) => Some(idx),
                    None if broken_upstreams.contains(u.as_str()) => None,
                    None => {
                        diags.push(at(
                            "upstream",
                            unknown_name("upstream", u, cfg.upstreams.keys()),
                        ));
                        None
                    }
                },
                // Why: a decision door forwards nothing, so a deployment without a proxy
                // listener needs no upstreams; with one, whatever it allows must go somewhere.
                // Regression: tests (it) check::* (allow-without-upstream)
                (None, Effect::Allow) if !proxy_listeners.is_empty() => {
                    diags.push(at(
                        "upstream",
                        format!(
                            "an allow rule needs an upstream: the proxy listener(s) {} forward what it allows (decision doors alone would need none)",
                            proxy_listeners.join(", ")
                        ),
                    ));
                    None
                }
                (None, Effect::Allow) => None,
                (None, Effect::Deny) => None,
            };
            let mut authenticators = Vec::with_capacity(r.authenticators.len());
            for (j, name) in r.authenticators.iter().enumerate() {
                match authn.position(name) {
                    Some(i) if authenticators.contains(&i) => diags.push(at(
                        &format!("authenticators[{j}]"),
                        format!("authenticator `{name}` listed twice"),
                    )),
                    Some(i) => authenticators.push(i),
                    None if cfg.authenticators.contains_key(name) => {}
                    None => diags.push(at(
                        &format!("authenticators[{j}]"),
                        unknown_name("authenticator", name, cfg.authenticators.keys()),
                    )),
                }
            }
            // Two accepted authenticators reading one place: the later one never decides a
            // credential found there (the first refuses what it cannot verify).
            for (j, &b) in authenticators.iter().enumerate() {
                let Some(later) = authn.at(b) else { continue };
                for earlier in authenticators[..j].iter().filter_map(|&a| authn.at(a)) {
                    if let Some(s) = later.sources.iter().find(|s| earlier.sources.contains(s)) {
                        diags.push(
                            at(
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
            if r.effect == Effect::Allow && r.authenticators.is_empty() && !r.anonymous {
                diags.push(at(
                    "authenticators",
                    "an allow rule must list its authenticators or set `anonymous: true`".into(),
                ));
            }
            let query: Vec<Box<str>> = authenticators
                .iter()
                .filter_map(|&i| authn.at(i))
                .flat_map(|a| a.query_sources().map(Into::into).collect::<Vec<Box<str>>>())
                .collect();
            let query_credentials = (!query.is_empty()).then(|| query.into());
            let require = match crate::authz::require::Requirements::compile(&r.require) {
                Ok(q) => q.with_scope_challenge(&challenges),
                Err(es) => {
                    for (f, m) in es {
                        diags.push(at(&format!("require.{f}"), m));
                    }
                    crate::authz::require::Requirements::default()
                }
            };
            if r.effect == Effect::Deny && r.require != crate::config::raw::RawRequire::default() {
                diags.push(at(
                    "require",
                    "requirements apply to allow rules; a deny rule refuses whatever it matches"
                        .into(),
                ));
            }
            if r.anonymous && require.needs_principal() {
                diags.push(at(
                    "anonymous",
                    "an anonymous request has no scopes, roles, claims or kind: drop `anonymous` or those requirements".into(),
                ));
            }
            // The rule's own identity headers are checked alone (so a global mistake is
            // reported once), then merged over the global ones.
            if let Err(es) = IdentityHeaders::compile(
                r.identity_headers
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?))),
            ) {
                for (name, m) in es {
                    diags.push(at(&format!("identity_headers.{name}"), m));
                }
            }
            let mut merged: Vec<(String, &str)> = cfg
                .identity_headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_str()))
                .collect();
            for (k, v) in &r.identity_headers {
                let k = k.to_ascii_lowercase();
                merged.retain(|(n, _)| *n != k);
                if let Some(v) = v {
                    merged.push((k, v.as_str()));
                }
            }
            let identity = IdentityHeaders::compile(merged.iter().map(|(k, v)| (k.as_str(), *v)))
                .unwrap_or_default();
            spoofable_names.extend(identity.names().cloned());
            for k in r.identity_headers.keys() {
                if let Ok(h) = crate::authz::identity::check_name(k) {
                    spoofable_names.push(h);
                }
            }
            let when = match (&r.when, r.effect) {
                (None, _) => None,
                (Some(_), Effect::Deny) => {
                    diags.push(at(
                        "when",
                        "`when` applies to allow rules; a deny rule refuses whatever it matches"
                            .into(),
                    ));
                    None
                }
                (Some(src), Effect::Allow) => match crate::authz::expr::Condition::compile(
                    src,
                    crate::authz::expr::Budget::from(&cfg.policies.conditions),
                ) {
                    Ok(c) => Some(c),
                    Err(m) => {
                        diags.push(at("when", m));
                        None
                    }
                },
            };
            let denial = r.denial.as_ref().and_then(|raw| {
                match crate::authz::denial::Denial::compile(raw) {
                    Ok(d) => Some(Arc::new(d)),
                    Err(es) => {
                        for (f, m) in es {
                            diags.push(at(&format!("denial.{f}"), m));
                        }
                        None
                    }
                }
            });
            let rate_limit = match &r.rate_limit {
                None => None,
                Some(name) => match rate_limits.get(name) {
                    Some(l) => Some(Arc::clone(l)),
                    None if cfg.rate_limits.contains_key(name) => None,
                    None => {
                        diags.push(at(
                            "rate_limit",
                            unknown_name("rate limit", name, cfg.rate_limits.keys()),
                        ));
                        None
                    }
                },
            };
            let delegate = match &r.delegate {
                None => None,
                Some(name) => match delegates.get(name) {
                    Some(d) => Some(Arc::clone(d)),
                    None if cfg.delegates.contains_key(name) => None,
                    None => {
                        diags.push(at(
                            "delegate",
                            unknown_name("delegate", name, cfg.delegates.keys()),
                        ));
                        None
                    }
                },
            };
            if r.delegate.is_some() && r.effect == Effect::Deny {
                diags.push(at(
                    "delegate",
                    "a delegate is asked about the requests an allow rule would let through".into(),
                ));
            }
            if r.rate_limit.is_some() && r.effect == Effect::Deny {
                diags.push(at(
                    "rate_limit",
                    "a rate limit applies to the requests an allow rule lets through".into(),
                ));
            }
            if diags.iter().filter(|d| d.is_error()).count() == errors_before {
                let rule = Rule {
                    id: RuleId(r.name.as_str().into()),
                    file: file_name.clone(),
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
                    delegate,
                    case_insensitive: policy.case_insensitive_paths
                        || r.upstream
                            .as_ref()
                            .and_then(|u| cfg.upstreams.get(u))
                            .is_some_and(|u| u.case_insensitive_paths),
                };
                // Lint: an earlier rule matching everything this one could means it never
                // decides. Candidates share its first literal segment, or have none.
                let first = rule.paths.first().and_then(|p| p.first_literal());
                let bucket = first.as_ref().and_then(|f| lint_buckets.get(f));
                let shadow = lint_any
                    .iter()
                    .chain(bucket.into_iter().flatten())
                    .copied()
                    .filter(|&a: &usize| rules.get(a).is_some_and(|e: &Rule| rule.shadowed_by(e)))
                    .min();
                if let Some(a) = shadow.and_then(|a| rules.get(a)) {
                    diags.push(
                        at(
                            "match",
                            format!(
                                "rule `{}` can never match: `{}` ({}) comes first and matches every request it would",
                                r.name, a.id.0, a.file
                            ),
                        )
                        .warning(),
                    );
                }
                // Lint: an earlier allow rule deciding part of what a deny rule matches is
                // how a deny meant as a guard quietly stops guarding.
                if shadow.is_none() && rule.effect == Effect::Deny {
                    // Candidates share the first literal segment of one of the deny rule's
                    // paths, or have none; a path without one can meet any earlier rule.
                    let firsts: Option<Vec<String>> =
                        rule.paths.iter().map(PathPattern::first_literal).collect();
                    let overlap = if let Some(firsts) = firsts.filter(|f| !f.is_empty()) {
                        lint_any
                            .iter()
                            .chain(firsts.iter().filter_map(|f| lint_buckets.get(f)).flatten())
                            .copied()
                            .filter(|&a| {
                                rules.get(a).is_some_and(|e: &Rule| {
                                    e.effect == Effect::Allow && rule.overlaps(e)
                                })
                            })
                            .min()
                    } else {
                        rules
                            .iter()
                            .position(|e| e.effect == Effect::Allow && rule.overlaps(e))
                    };
                    if let Some(a) = overlap.and_then(|a| rules.get(a)) {
                        diags.push(
                            at(
                                "match",
                                format!(
                                    "deny rule `{}` does not refuse everything it matches: `{}` ({}) comes first and allows some of those requests",
                                    r.name, a.id.0, a.file
                                ),
                            )
                            .warning(),
                        );
                    }
                }
                let index = rules.len();
                if rule.paths.is_empty() {
                    lint_any.push(index);
                }
                for p in &rule.paths {
                    match p.first_literal() {
                        Some(f) => lint_buckets.entry(f).or_default().push(index),
                        None => lint_any.push(index),
                    }
                }
                rules.push(rule);
            }
        }
    }
    if rules.is_empty() && diags.is_empty() {
        diags.push(
            Diagnostic::at(
                &src.display,
                &src.index,
                "policies.dir",
                format!(
                    "no rules found in {}: every request will be denied",
                    loaded.policy_dir.display()
                ),
            )
            .warning(),
        );
    }

    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    let version = crate::secret::hex(digest.finish().as_ref().get(..6).unwrap_or_default());
    let snapshot = Snapshot {
        version: version.into(),
        loaded_at: SystemTime::now(),
        listeners,
        admin_address: cfg.admin.address,
        server,
        upstreams,
        routes: RouteTable::new(rules),
        authn,
        rate_limits: crate::ratelimit::RateLimits::new(rate_limits.into_values().collect()),
        delegates,
        clock,
        assertion,
        challenges,
        spoofable: Spoofable::new(&spoofable_names, from_trusted),
        access_log: cfg.logging.access_log,
        watched,
        raw: cfg.clone(),
    };
    Ok((snapshot, diags))
}

/// A listener's door, its field errors reported through `error` (field relative to `door.`).
fn compile_door(
    raw: &crate::config::raw::RawDoor,
    error: &mut dyn FnMut(&str, String),
) -> crate::snapshot::DoorSettings {
    use crate::config::raw::RawDoor;
    use crate::snapshot::{DecisionDoor, DoorSettings};
    let common =
        |peers: &[crate::config::raw::Network], timeout: std::time::Duration| DecisionDoor {
            peers: peers.iter().map(|n| n.0).collect(),
            timeout,
        };
    match raw {
        RawDoor::Proxy => DoorSettings::Proxy,
        RawDoor::EnvoyGrpc(d) => DoorSettings::EnvoyGrpc(common(&d.peers, d.timeout)),
        RawDoor::EnvoyHttp(d) => {
            let prefix = d.path_prefix.trim_end_matches('/');
            if !prefix.is_empty()
                && (!prefix.starts_with('/')
                    || crate::request::path::canonicalize(prefix).as_deref() != Ok(prefix))
            {
                error(
                    "envoy_http.path_prefix",
                    format!("`{}` is not a canonical path like `/authz`", d.path_prefix),
                );
            }
            DoorSettings::EnvoyHttp {
                common: common(&d.peers, d.timeout),
                path_prefix: prefix.into(),
            }
        }
        RawDoor::ForwardAuth(d) => {
            let mut map = Vec::with_capacity(d.status_map.len());
            for (&from, &to) in &d.status_map {
                match (
                    http::StatusCode::from_u16(from),
                    http::StatusCode::from_u16(to),
                ) {
                    (Ok(f), Ok(t)) if (200..600).contains(&from) && (200..600).contains(&to) => {
                        map.push((f, t));
                    }
                    _ => error(
                        &format!("forward_auth.status_map.{from}"),
                        "statuses are between 200 and 599".into(),
                    ),
                }
            }
            DoorSettings::ForwardAuth {
                common: common(&d.peers, d.timeout),
                status_map: map.into(),
            }
        }
    }
}

/// The public half of `config/dev/dev-1.key`, which ships with Portcullis.
const PUBLISHED_DEV_KEY: &str = include_str!("../../config/dev/dev-1.pem");

/// `unknown KIND `name``, and the names that exist (or that none does).
fn unknown_name<'a>(kind: &str, name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let known: Vec<String> = known.map(|k| format!("`{k}`")).collect();
    if known.is_empty() {
        format!("unknown {kind} `{name}`: none is configured")
    } else {
        format!("unknown {kind} `{name}` (configured: {})", known.join(", "))
    }
}

/// Settings that a running gateway cannot change, as (field path, message); a reload that
/// changes any fails with them.
pub fn restart_only_changes(old: &Snapshot, new: &Snapshot) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let (o, n) = (&old.raw, &new.raw);
    let addrs = |c: &super::raw::RawConfig| {
        c.listeners
            .iter()
            .map(|l| {
                let door = std::mem::discriminant(&l.door);
                (l.name.clone(), l.address, l.tls.is_some(), door)
            })
            .collect::<Vec<_>>()
    };
    if addrs(o) != addrs(n) {
        out.push((
            "listeners",
            "listener names, addresses, doors or TLS on/off changed: restart required",
        ));
    }
    if o.admin.address != n.admin.address {
        out.push(("admin.address", "changed: restart required"));
    }
    if o.admin.public_address != n.admin.public_address {
        out.push(("admin.public_address", "changed: restart required"));
    }
    if o.server.max_connections != n.server.max_connections {
        out.push(("server.max_connections", "changed: restart required"));
    }
    if o.server.worker_threads != n.server.worker_threads {
        out.push(("server.worker_threads", "changed: restart required"));
    }
    if o.logging.format != n.logging.format || o.logging.level != n.logging.level {
        out.push(("logging", "format or level changed: restart required"));
    }
    out
}
