//! The admin listener (loopback by default, no authentication): `/healthz`, `/readyz`,
//! `/metrics`, `/config`, `/.well-known/jwks.json` and `POST /reload`. Never shows a secret:
//! `/config` reports the version, load time and last reload error (diagnostics name files and
//! fields, not values).
//!
//! The optional public admin listener (`admin.public_address`) serves the read-only subset
//! that other machines need, `GET`/`HEAD` `/healthz`, `/readyz` and the JWKS (other methods
//! there: 405), and no other path (404): the upstreams that verify identity assertions can
//! reach it without reaching `POST /reload`. Each admin listener serves at most 64 connections
//! and 64 requests at once, each connection for at most a minute, on the connection loop every
//! door uses (its deadlines and limits).
//! On shutdown the admin listeners go on answering (`/readyz` says not ready) until the doors
//! have drained, then drain too.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, ResponseBody};
use crate::config::reload::{ReloadOutcome, Reloader, Trigger};
use crate::server::Conn;
use crate::server::listener::{Answering, Handler};
use crate::telemetry::metrics::Metrics;

/// State the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    /// Reloads and the active snapshot.
    pub reloader: Arc<Reloader>,
    /// Metrics to expose.
    pub metrics: Arc<Metrics>,
    /// False once shutdown begins, so load balancers stop sending traffic.
    pub ready: AtomicBool,
    /// Set the first time `/readyz` (or the gRPC door's health service) answers ready: from
    /// then on a reload that adds a key source not yet fetched does not take the gateway out
    /// of rotation.
    pub was_ready: Arc<AtomicBool>,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (the admin listener).
    Full,
    /// `GET`/`HEAD` `/healthz`, `/readyz` and `/.well-known/jwks.json` only.
    Public,
}

/// Connections one admin listener serves at once, and requests it answers at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections one client address may hold on one admin listener; past it a new one closes
/// the oldest with no request in flight ([`crate::server::listener::PerClient`]).
///
/// Why: the 64 were shared by everyone, and a connection that sends nothing is held until the
/// idle timeout: one client opening 64 and reopening them once a minute kept `/readyz`
/// unanswered (a load balancer takes the gateway out) and the assertion keys unreachable on
/// the public listener. Regression: tests (it) assertion::one_client_cannot_hold_the_admin_listener
pub const MAX_CONNECTIONS_PER_CLIENT: usize = 8;
/// How long an admin connection may live, whatever it does: health checks, scrapes and key
/// fetches are short, and a client holding connections open (each busy just often enough
/// for the idle timeout never to pass) lets go of them by then.
pub const MAX_CONNECTION_LIFE: std::time::Duration = std::time::Duration::from_secs(60);

/// An admin listener's [`Handler`]: served by the connection loop every door uses
/// ([`crate::server::listener::AcceptLoop`]: the server's header, idle and slow-reader
/// deadlines, the drain), with connection and in-flight limits of its own, so that a flood
/// on a door never keeps a health check or a scrape out.
#[derive(Debug)]
pub struct AdminHandler {
    /// What the endpoints read.
    pub state: Arc<AdminState>,
    /// Which endpoints it serves.
    pub scope: Scope,
}

impl Handler for AdminHandler {
    const DOOR: Option<crate::request::facts::Door> = None;

    fn call(&self, _conn: Arc<Conn>, req: Request<Incoming>) -> Answering {
        let state = Arc::clone(&self.state);
        let scope = self.scope;
        // (Its connection is marked busy, not closed for a newer one of its client, from
        // the head to the last byte of the answer: `server::connection`.)
        Box::pin(async move { route(&state, scope, req).await })
    }
}

async fn route(state: &AdminState, scope: Scope, req: Request<Incoming>) -> Response<ResponseBody> {
    if scope == Scope::Public
        && !matches!(
            req.uri().path(),
            "/healthz" | "/readyz" | "/.well-known/jwks.json"
        )
    {
        // Not even a hint that more exists here.
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if scope == Scope::Full
        && let Some(refused) = cross_site(&req, &state.reloader.current().load().admin_hosts)
    {
        return text(StatusCode::FORBIDDEN, refused);
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => {
            // Ready: not shutting down, and every remote key set not marked optional has
            // been fetched once (an optional one: or its startup timeout passed; requests
            // needing it get 503s, not hangs).
            // Why: once ready, a reload that adds a source the gateway cannot reach yet must
            // not take every replica out of rotation at once; the requests that need that
            // source get 503 until its first fetch, the others are served.
            // Regression: jwt::readyz_waits_for_every_remote_key_source_unless_optional
            if state.ready.load(Ordering::Relaxed)
                && (state.was_ready.load(Ordering::Relaxed)
                    || state.reloader.current().load().authn.is_ready())
            {
                state.was_ready.store(true, Ordering::Relaxed);
                text(StatusCode::OK, "ready\n")
            } else if scope == Scope::Public {
                // Other machines learn nothing of the config.
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            } else {
                // Why the reason: "not ready" alone sent operators to the logs to find which
                // key source a new gateway was waiting for.
                // Regression: jwt::readyz_waits_for_every_remote_key_source_unless_optional
                let why = if state.ready.load(Ordering::Relaxed) {
                    let waiting = state.reloader.current().load().authn.waiting_for();
                    format!(
                        "not ready: the keys of {} not fetched yet\n",
                        waiting.join(", ")
                    )
                } else {
                    "not ready: shutting down\n".to_owned()
                };
                text(StatusCode::SERVICE_UNAVAILABLE, why)
            }
        }
        (&Method::GET, "/metrics") => {
            let mut text = state.metrics.encode();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let snapshot = state.reloader.current().load_full();
            crate::telemetry::authn_metrics::encode(&mut text, &snapshot.authn, now);
            crate::telemetry::authn_metrics::encode_delegates(&mut text, &snapshot.delegates);
            let mut r = Response::new(body::full(text));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            r
        }
        (&Method::GET, "/config") => json(StatusCode::OK, &config_status(state)),
        (&Method::GET | &Method::HEAD, "/.well-known/jwks.json") => {
            // The identity assertion's public keys; short-lived in caches, so a rotation
            // (new key, old one retired) is seen well before the retired one leaves.
            let jwks = state
                .reloader
                .current()
                .load()
                .assertion
                .as_ref()
                .map(|a| a.jwks().clone());
            match jwks {
                Some(doc) => {
                    let mut r = Response::new(body::full(doc));
                    let h = r.headers_mut();
                    h.insert(
                        header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/jwk-set+json"),
                    );
                    h.insert(
                        header::CACHE_CONTROL,
                        http::HeaderValue::from_static("max-age=60"),
                    );
                    r
                }
                None => text(StatusCode::NOT_FOUND, "no identity assertion configured\n"),
            }
        }
        (&Method::POST, "/reload") => match state.reloader.reload(Trigger::Admin).await {
            Ok(outcome) => {
                let (outcome, version) = match outcome {
                    ReloadOutcome::Applied { version } => ("applied", version),
                    ReloadOutcome::Unchanged { version } => ("unchanged", version),
                };
                // Warnings of this reload: an applied one's, or the restart-only settings
                // still waiting.
                let warnings: Vec<String> = state
                    .reloader
                    .status()
                    .last_diagnostics
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({"outcome": outcome, "version": &*version, "warnings": warnings}),
                )
            }
            Err(e) => json(
                StatusCode::UNPROCESSABLE_ENTITY,
                &serde_json::json!({
                    "outcome": "failed",
                    "errors": e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "diagnostics": e.0,
                }),
            ),
        },
        (
            _,
            "/healthz" | "/readyz" | "/metrics" | "/config" | "/reload" | "/.well-known/jwks.json",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Why the full admin listener refuses a request a browser made for a web page, if it does.
///
/// Why: the listener has no authentication, and loopback is no defence against a browser on
/// the same machine. A page could `POST /reload` (a form needs no preflight), and a page whose
/// name was rebound to 127.0.0.1 (DNS rebinding) could read `/config` and `/metrics` as its
/// own origin. Tools (curl, Prometheus, probes) send no `Origin` and name the listener by its
/// address or a configured name; a browser sends `Origin` on every POST and the page's name
/// in `Host`. Regression: tests (it) reload::admin_refuses_what_a_web_page_sends
fn cross_site(req: &Request<Incoming>, allowed: &[Box<str>]) -> Option<&'static str> {
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && req.headers().contains_key(header::ORIGIN)
    {
        return Some("cross-origin request refused\n");
    }
    // Why: only the first of two `Host` lines was checked, so `Host: 127.0.0.1` then
    // `Host: evil.example` passed, though RFC 9112 has such a request refused and a server
    // behind may read the other. Regression: tests (it) reload::admin_refuses_what_a_web_page_sends
    if req.headers().get_all(header::HOST).iter().nth(1).is_some() {
        return Some("more than one Host header\n");
    }
    let host = match req.uri().authority() {
        Some(a) => Some(a.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .map(|h| h.to_str().unwrap_or("\u{fffd}")),
    };
    match host {
        Some(h) if !admin_host(h, allowed) => Some(
            "host not allowed: name the listener by its address or list the name in admin.allowed_hosts\n",
        ),
        _ => None,
    }
}

/// Whether `host` (`name[:port]`) is an IP literal, `localhost`, or a name in `allowed`.
fn admin_host(host: &str, allowed: &[Box<str>]) -> bool {
    let port_ok = |p: &str| p.parse::<u16>().is_ok();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').is_some_and(|(ip, after)| {
            ip.parse::<std::net::Ipv6Addr>().is_ok()
                && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok))
        });
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port_ok(port) => name,
        Some(_) => return false,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn config_status(state: &AdminState) -> serde_json::Value {
    let snap = state.reloader.current().load();
    let status = state.reloader.status();
    let secs = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    };
    serde_json::json!({
        "version": &*snap.version,
        "loaded_at": secs(snap.loaded_at),
        "last_reload_attempt": status.last_attempt.map(secs),
        "last_reload_error": status.last_error,
        "last_reload_diagnostics": status.last_diagnostics,
        "rules": snap.routes.rules().len(),
        "upstreams": snap.upstreams.iter().map(|u| &*u.name).collect::<Vec<_>>(),
    })
}

fn text(status: StatusCode, s: impl Into<bytes::Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(body::full(s));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ResponseBody> {
    let mut r = Response::new(body::full(format!("{v}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_hosts() {
        let allowed: Vec<Box<str>> = vec!["admin.svc".into()];
        for (host, ok) in [
            ("127.0.0.1", true),
            ("127.0.0.1:9901", true),
            ("[::1]:9901", true),
            ("[::1]", true),
            ("localhost", true),
            ("LOCALHOST.:1", true),
            ("admin.svc:9901", true),
            ("Admin.Svc", true),
            ("evil.example", false),
            ("127.0.0.1.nip.io", false),
            ("[evil]:1", false),
            ("[::1]evil", false),
            ("[::1]:", false),
            ("localhost:", false),
            ("localhost:99999", false),
            ("localhost:x", false),
            ("localhost.evil.example", false),
            ("", false),
        ] {
            assert_eq!(super::admin_host(host, &allowed), ok, "{host}");
        }
    }
}
