//! Upstreams: where allowed requests go. An upstream whose settings and TLS files are
//! unchanged keeps its endpoints, pools, ejections and health.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::Cx;
use crate::upstream::Upstream;

/// The compiled upstreams, and what rules need to name them.
pub(super) struct Upstreams {
    /// In config order; rules refer to them by index.
    pub list: Vec<Arc<Upstream>>,
    /// Name → index.
    pub index: HashMap<String, usize>,
    /// Upstreams that exist but failed to compile: rules naming them are not also reported.
    pub broken: HashSet<String>,
}

/// Every upstream; its TLS files are watched.
pub(super) fn compile(cx: &mut Cx<'_>) -> Upstreams {
    let loaded = cx.loaded;
    let mut out = Upstreams {
        list: Vec::with_capacity(loaded.raw.upstreams.len()),
        index: HashMap::new(),
        broken: HashSet::new(),
    };
    for (name, raw) in &loaded.raw.upstreams {
        let prev = cx
            .previous
            .and_then(|p| p.upstreams.iter().find(|u| *u.name == **name));
        // TLS files are watched: a renewed CA or client certificate reloads, and a changed
        // file rebuilds the upstream's connections.
        for file in [&raw.ca_file, &raw.client_cert, &raw.client_key]
            .into_iter()
            .flatten()
        {
            let path = cx.path(file);
            cx.watched.push(path);
        }
        // Why: a round of checks waits for its slowest (up to `timeout`), so a timeout past
        // the interval made the checks run every `timeout`, not every `interval`, and a hung
        // endpoint left rotation later than the settings said.
        // Regression: tests (it) check::a_health_check_timeout_past_its_interval_warns
        if let Some(h) = &raw.health_check
            && h.timeout > h.interval
        {
            cx.warn(
                &format!("upstreams.{name}.health_check.timeout"),
                format!(
                    "longer than `interval` ({}): a round of checks waits for its slowest, so checks run every `timeout` at worst; make it at most the interval",
                    humantime::format_duration(h.interval)
                ),
            );
        }
        // Why: an ejection lasts `base_time` doubled per repeat, at most `max_time`: with a
        // base past the maximum, every ejection lasted `max_time` and the setting read as
        // something it was not. Said at the field written (the other may be its default).
        // Regression: tests (it) check::ejection_times_the_wrong_way_round_warn
        if raw.ejection.base_time > raw.ejection.max_time {
            let base = format!("upstreams.{name}.ejection.base_time");
            let (field, message) = if loaded.config.index.has(&base) {
                (
                    base,
                    format!(
                        "longer than `max_time` ({}): every ejection lasts `max_time`; make `base_time` at most `max_time`",
                        humantime::format_duration(raw.ejection.max_time)
                    ),
                )
            } else {
                (
                    format!("upstreams.{name}.ejection.max_time"),
                    format!(
                        "shorter than `base_time` ({}, its default): every ejection lasts `max_time`; set `base_time` at most `max_time`",
                        humantime::format_duration(raw.ejection.base_time)
                    ),
                )
            };
            cx.warn(&field, message);
        }
        // Why: an expired client certificate, or one not issued for clients, is refused by
        // the upstream at every handshake (502 `upstream_tls`); nothing said so at load. A
        // warning, not an error: refusing it would refuse every reload once it expired.
        // Regression: tls::certs::tests::a_certificate_clients_refuse_says_why
        if let Some(cert) = &raw.client_cert {
            let path = cx.path(cert);
            if let Some(reason) =
                crate::tls::certs::unusable_leaf(&path, crate::tls::certs::Purpose::Client)
            {
                cx.warn(
                    &format!("upstreams.{name}.client_cert"),
                    format!("{}: {reason}", path.display()),
                );
            }
        }
        // Why: a leaf that is not self-signed verifies no server as a trust anchor (its own
        // issuer is another name), so every request to the upstream failed with 502
        // `upstream_tls` and nothing said why at load. A self-signed leaf is a pin, and works.
        // Regression: tests (it) upstreams::upstream_ca_file_that_verifies_nothing_warns
        if let Some(ca) = &raw.ca_file {
            let path = cx.path(ca);
            for a in crate::tls::server::non_ca_anchors(&path) {
                if !a.self_issued {
                    cx.warn(
                        &format!("upstreams.{name}.ca_file"),
                        format!(
                            "certificate {} in {} (`{}`) is neither a CA certificate nor self-signed: it verifies no server, and requests to `{name}` would fail with 502 `upstream_tls`; give the CA that issued the upstream's certificate",
                            a.place,
                            path.display(),
                            a.subject
                        ),
                    );
                }
            }
        }
        // Why: `dns_refresh` re-resolves the names in `endpoints`; the URL's own host is
        // looked up at each connect instead (first address only, pooled connections kept),
        // so on an upstream without `endpoints` the setting did nothing, silently.
        // Regression: tests (it) upstreams::dns_refresh_without_endpoints_warns
        let field = format!("upstreams.{name}.dns_refresh");
        if raw.endpoints.is_empty() && loaded.config.index.has(&field) {
            cx.warn(
                &field,
                "has no effect without `endpoints`: the URL's host is looked up at each new connection (its first address); list the name in `endpoints` (`endpoints: [\"host:port\"]`) to balance over its addresses and re-resolve them every `dns_refresh`"
                    .to_owned(),
            );
        } else if loaded.config.index.has(&field)
            && raw
                .endpoints
                .iter()
                .all(|e| e.parse::<std::net::SocketAddr>().is_ok())
        {
            // Why: as without `endpoints`, an address needs no lookup, so a `dns_refresh`
            // beside addresses only did nothing, and `check` said nothing.
            // Regression: tests (it) upstreams::dns_refresh_without_endpoints_warns
            cx.warn(
                &field,
                "has no effect: every endpoint is an IP address, which is never looked up; `dns_refresh` re-resolves the names in `endpoints` (`api.internal:8080`)"
                    .to_owned(),
            );
        }
        for (i, j) in crate::upstream::listed_twice(&raw.endpoints) {
            cx.warn(
                &format!("upstreams.{name}.endpoints[{i}]"),
                format!("the same endpoint as `endpoints[{j}]`: it is one endpoint; list it once"),
            );
        }
        if let Some(aud) = &raw.assertion_audience {
            let field = format!("upstreams.{name}.assertion_audience");
            if aud.trim().is_empty() {
                cx.error(&field, "must not be empty".into());
            } else if loaded.raw.identity_assertion.is_none() {
                cx.warn(
                    &field,
                    "has no effect without `identity_assertion`".to_owned(),
                );
            }
        }
        match Upstream::build(name, raw, &loaded.base_dir, prev.map(|u| &**u)) {
            Ok(u) => {
                out.index.insert(name.clone(), out.list.len());
                out.list.push(Arc::new(u));
            }
            Err(e) => {
                out.broken.insert(name.clone());
                cx.field_errors(&format!("upstreams.{name}"), e);
            }
        }
    }
    out
}
