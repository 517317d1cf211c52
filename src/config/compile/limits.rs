//! Named rate limits and delegates. An unchanged definition keeps its running state (limiter
//! budgets, the delegate's answer cache): a reload must not hand every client a fresh burst.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::HeaderName;

use super::Cx;
use crate::authz::delegate::Delegate;
use crate::ratelimit::Limit;
use crate::ratelimit::redis::RedisStore;
use crate::telemetry::trace_context::{TRACEPARENT, TRACESTATE};

/// The Redis server `backend: redis` limits share; an unchanged section keeps its
/// connection, breaker and counters.
pub(super) fn redis(cx: &mut Cx<'_>) -> Option<Arc<RedisStore>> {
    let loaded = cx.loaded;
    let raw = loaded.raw.redis.as_ref()?;
    let before = cx.previous.and_then(|p| p.redis.as_ref());
    // Why: an expired client certificate, or one not issued for clients, loaded without a
    // word and every check then failed at the handshake (an outage, answered by each
    // limit's failure mode). A warning, as for an upstream's: an error would refuse every
    // reload once it expired. Regression: tests (it) redis::redis_over_tls_with_a_private_ca_and_a_client_certificate
    if let Some(cert) = &raw.client_cert {
        let path = cx.path(cert);
        if let Some(reason) =
            crate::tls::certs::unusable_leaf(&path, crate::tls::certs::Purpose::Client)
        {
            cx.warn("redis.client_cert", format!("{}: {reason}", path.display()));
        }
    }
    // Why: a leaf that is not self-signed verifies no server as a trust anchor, so every
    // check failed at the handshake and nothing said why at load (as for an upstream's).
    // Regression: tests (it) redis::redis_over_tls_with_a_private_ca_and_a_client_certificate
    if let Some(ca) = &raw.ca_file {
        let path = cx.path(ca);
        for a in crate::tls::server::non_ca_anchors(&path) {
            if !a.self_issued {
                cx.warn(
                    "redis.ca_file",
                    format!(
                        "certificate {} in {} (`{}`) is neither a CA certificate nor self-signed: it verifies no Redis server, and every check would fail at the handshake; give the CA that issued the servers' certificates",
                        a.place,
                        path.display(),
                        a.subject
                    ),
                );
            }
        }
    }
    match RedisStore::compile(raw, &loaded.base_dir, before, &mut cx.watched) {
        Ok(r) => Some(r),
        Err(es) => {
            cx.field_errors("redis", es);
            None
        }
    }
}

/// The rate limits by name.
pub(super) fn rate_limits(
    cx: &mut Cx<'_>,
    redis: Option<&Arc<RedisStore>>,
    clock: &crate::clock::Clock,
) -> BTreeMap<String, Arc<Limit>> {
    let loaded = cx.loaded;
    let mut out = BTreeMap::new();
    let redis_broken = loaded.raw.redis.is_some() && redis.is_none();
    for (name, raw) in &loaded.raw.rate_limits {
        let before = cx.previous.and_then(|p| p.rate_limits.get(name));
        match Limit::compile(name, raw, before, redis, clock) {
            Ok(l) => {
                out.insert(name.clone(), l);
            }
            // A broken `redis:` section is reported there, once.
            Err(es) => {
                let es = es
                    .into_iter()
                    .filter(|e| !(redis_broken && e.field == "backend"));
                cx.field_errors(&format!("rate_limits.{name}"), es);
            }
        }
    }
    out
}

/// The delegates by name; the headers their answers may set join `spoofable`.
pub(super) fn delegates(
    cx: &mut Cx<'_>,
    spoofable: &mut Vec<HeaderName>,
) -> BTreeMap<String, Arc<Delegate>> {
    let loaded = cx.loaded;
    let mut out = BTreeMap::new();
    for (name, raw) in &loaded.raw.delegates {
        let before = cx
            .previous
            .and_then(|p| p.delegates.get(name))
            .map(|d| &**d);
        // A renewed CA reloads.
        if let Some(ca) = &raw.ca_file {
            let path = cx.path(ca);
            cx.watched.push(path);
        }
        // Why: at a decision door the call is cut to end before the door's deadline (a
        // tenth of what is left kept for the answer), so a delegate slower than that was
        // answered in time at the proxy and by its failure mode at the door: two decisions
        // for one request, and nothing said so.
        // Regression: tests (it) check::a_delegate_slower_than_a_doors_timeout_warns
        for listener in &loaded.raw.listeners {
            use crate::config::raw::RawDoor;
            let door_timeout = match &listener.door {
                RawDoor::Proxy => continue,
                RawDoor::EnvoyGrpc(d) => d.timeout,
                RawDoor::EnvoyHttp(d) => d.timeout,
                RawDoor::ForwardAuth(d) => d.timeout,
            };
            if raw.timeout > door_timeout.mul_f64(0.9) {
                cx.warn(
                    &format!("delegates.{name}.timeout"),
                    format!(
                        "longer than the `{}` listener's door allows ({} of its `timeout`, {}): there a call is cut to end before the door's deadline, so a delegate answering in time at the proxy is answered by its `failure_mode` at that door; make it shorter, or the door's `timeout` longer",
                        listener.name,
                        "90%",
                        humantime::format_duration(door_timeout)
                    ),
                );
            }
        }
        match Delegate::compile(name, raw, &loaded.base_dir, before) {
            Ok(d) => {
                // Why: a renamed assertion header (`identity_assertion.header: x-gw-assertion`)
                // passed among a delegate's headers, and the delegate's forged value reached
                // the upstream, which reads it as the gateway's signed word (the default
                // name is refused by `Delegate::compile`).
                // Regression: tests (it) delegate::check_warns_about_delegate_headers_the_gateway_owns
                let assertion = loaded
                    .raw
                    .identity_assertion
                    .as_ref()
                    .and_then(|a| a.header.as_deref())
                    .map(crate::authz::identity::fold_name);
                for h in d.header_names() {
                    if assertion.as_deref() == Some(&*crate::authz::identity::fold_name(h.as_str()))
                    {
                        cx.error(
                            &format!("delegates.{name}.headers"),
                            format!(
                                "`{h}` is the identity assertion's header: a delegate never sets it"
                            ),
                        );
                        continue;
                    }
                    if let Some(why) = delegate_header_clash(h, &loaded.raw) {
                        cx.warn(&format!("delegates.{name}.headers"), format!("`{h}` {why}"));
                    }
                }
                spoofable.extend(d.header_names().iter().cloned());
                out.insert(name.clone(), Arc::new(d));
            }
            Err(e) => cx.field_errors(&format!("delegates.{name}"), [e]),
        }
    }
    out
}

/// Why a header a delegate's answer may set deserves a word in `check`: an identity header
/// (the delegate's value replaces the gateway's, so the identity the upstream believes comes
/// from the delegate), or one the gateway sets afterwards (the delegate's value never arrives).
fn delegate_header_clash(
    h: &HeaderName,
    raw: &crate::config::raw::RawConfig,
) -> Option<&'static str> {
    let named = |n: &str| HeaderName::from_bytes(n.as_bytes()).is_ok_and(|n| n == *h);
    if raw.identity_headers.keys().any(|k| named(k)) {
        return Some(
            "is also an identity header: an allowing delegate's value replaces the gateway's",
        );
    }
    let traced = raw.tracing.propagate || raw.tracing.otlp.is_some();
    if (traced && (*h == TRACEPARENT || *h == TRACESTATE)) || named(&raw.server.request_id_header) {
        return Some(
            "is set by the gateway after the delegate answers: its value never reaches the upstream",
        );
    }
    None
}
