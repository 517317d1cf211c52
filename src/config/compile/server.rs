//! Server settings: limits, timeouts, trusted proxies, the infrastructure headers they may
//! pass, the request id header.

use http::HeaderName;

use super::Cx;
use crate::authz::spoofable::NamePattern;
use crate::snapshot::ServerSettings;

/// The server settings and the infrastructure headers trusted proxies may pass on.
/// The most connections or requests a setting may count: more than any machine serves.
const MAX_COUNT: usize = 1_000_000;

/// The most worker threads.
const MAX_WORKERS: usize = 1024;

pub(super) fn compile(cx: &mut Cx<'_>) -> (ServerSettings, Vec<NamePattern>) {
    let loaded = cx.loaded;
    let s = &loaded.raw.server;
    if s.max_header_bytes < 8192 {
        cx.error("server.max_header_bytes", "must be at least 8192".into());
    }
    if !(1024..=65535).contains(&s.max_target_bytes) {
        cx.error(
            "server.max_target_bytes",
            "must be between 1024 and 65535".into(),
        );
    }
    // Why the upper bounds: `check` passed values `run` died of (a semaphore of more permits
    // than tokio allows panicked; 100,000 worker threads aborted after 10 s and 480 MB).
    // Regression: tests (it) check::server_sizes_are_bounded
    if !(1..=MAX_COUNT).contains(&s.max_connections) {
        cx.error("server.max_connections", format!("from 1 to {MAX_COUNT}"));
    }
    if !(1..=MAX_COUNT).contains(&s.max_in_flight) {
        cx.error("server.max_in_flight", format!("from 1 to {MAX_COUNT}"));
    }
    if !(1..=MAX_COUNT).contains(&s.max_uploads_per_client) {
        cx.error(
            "server.max_uploads_per_client",
            format!("from 1 to {MAX_COUNT}"),
        );
    }
    if s.worker_threads > MAX_WORKERS {
        cx.error(
            "server.worker_threads",
            format!("at most {MAX_WORKERS} (0: one per core)"),
        );
    }
    let request_id_header = match HeaderName::from_bytes(s.request_id_header.as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            cx.error(
                "server.request_id_header",
                format!("`{}` is not a valid header name", s.request_id_header),
            );
            HeaderName::from_static("x-request-id")
        }
    };
    let mut from_trusted = Vec::with_capacity(s.trusted_proxy_headers.len());
    for (i, h) in s.trusted_proxy_headers.iter().enumerate() {
        match NamePattern::parse(h) {
            Ok(p) => from_trusted.push(p),
            Err(m) => cx.error(&format!("server.trusted_proxy_headers[{i}]"), m),
        }
    }
    // Why: a zero timeout passed `check` and closed every connection at once.
    // Regression: tests (it) check golden case zero-timeouts
    for (field, t) in [
        ("server.header_read_timeout", s.header_read_timeout),
        ("server.idle_timeout", s.idle_timeout),
        ("server.send_timeout", s.send_timeout),
    ] {
        if t.is_zero() {
            cx.error(field, "must be more than 0".into());
        }
    }
    if s.http2.window.is_zero() {
        cx.error("server.http2.window", "must be more than 0".into());
    }
    // Why: `0.0.0.0/0` passed without a word, and let any client set the address that
    // `require.networks`, rate limits and the logs read. Regression: tests (it)
    // check::trusting_every_address_and_an_exposed_admin_warn
    for (i, n) in s.trusted_proxies.iter().enumerate() {
        if n.0.prefix_len() == 0 {
            cx.warn(
                &format!("server.trusted_proxies[{i}]"),
                format!("`{}` trusts every address: any client can choose the address `require.networks`, rate limits and the access log read (`X-Forwarded-For`); list the proxies' own networks", n.0),
            );
        }
    }
    let server = ServerSettings {
        header_read_timeout: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        send_timeout: s.send_timeout,
        max_header_bytes: s.max_header_bytes,
        max_target_bytes: s.max_target_bytes,
        max_headers: s.max_headers,
        max_body_bytes: s.max_body_bytes,
        max_uploads_per_client: s.max_uploads_per_client,
        max_concurrent_streams: s.max_concurrent_streams,
        shutdown_grace: s.shutdown_grace,
        shutdown_delay: s.shutdown_delay,
        trusted_proxies: s.trusted_proxies.iter().map(|n| n.0).collect(),
        request_id_header,
        http2: crate::snapshot::Http2Limits {
            max_resets: s.http2.max_resets,
            max_peer_resets: s.http2.max_peer_resets,
            max_pending_resets: crate::snapshot::PENDING_RESETS,
            max_control_frames: s.http2.max_control_frames,
            window: s.http2.window,
        },
    };
    (server, from_trusted)
}
