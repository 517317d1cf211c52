//! The upgrade request (a WebSocket handshake) of a rule that relays it: sent upstream on a
//! connection of its own with the same header mutation as any allowed request (identity
//! headers set, spoofed and credential headers removed, forwarding headers, request id,
//! trace context), then `Connection: upgrade` and the protocol asked for. The upstream's
//! `101` goes back to the client and hands both connections to [`super::tunnel`]; any other
//! answer is relayed as a normal response.
//!
//! WebSockets over HTTP/2 (RFC 8441): an extended `CONNECT` with `:protocol websocket` is
//! decided as the `GET` it stands for, and goes upstream as an HTTP/1.1 WebSocket handshake
//! with a key of the gateway's (`Sec-WebSocket-Key`, whose `Sec-WebSocket-Accept` the
//! gateway checks); the upstream's `101` becomes the client's `200`, and the tunnel runs in
//! the HTTP/2 stream, on a task of its own, which ends it on the drain. A rule that does not relay
//! WebSockets answers such a request 403 `upgrade_not_allowed`: unlike an HTTP/1.1 upgrade,
//! it has no plain request to fall back to.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;

use super::service::{Ctx, Failure};
pub(super) use super::tunnel::{Bounds, Recheckable};
use crate::body::{self, RequestBody, ResponseBody};
use crate::server::hop_by_hop;
use crate::upstream::{PooledBody, Upstream};

const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");
const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
const SEC_WEBSOCKET_KEY: http::HeaderName = http::HeaderName::from_static("sec-websocket-key");
const SEC_WEBSOCKET_ACCEPT: http::HeaderName =
    http::HeaderName::from_static("sec-websocket-accept");
const SEC_WEBSOCKET_VERSION: http::HeaderName =
    http::HeaderName::from_static("sec-websocket-version");

/// An upgrade a request asks for.
#[derive(Debug, Clone)]
pub(crate) struct Asked {
    /// The protocols (`Upgrade`'s value; `websocket` for an extended CONNECT).
    pub(crate) protocols: HeaderValue,
    /// An HTTP/2 extended CONNECT (RFC 8441) rather than an HTTP/1.1 `Upgrade`.
    pub(super) h2: bool,
}

/// The upgrade a request asks for, read before the hop-by-hop headers are removed: its one
/// `Upgrade` header on HTTP/1.1 with `upgrade` named in `Connection`, or an HTTP/2 extended
/// CONNECT for `websocket`, whose method becomes the `GET` it stands for (RFC 8441 §5), so
/// the rules decide it as the same request over HTTP/1.1.
pub(crate) fn asked(parts: &mut http::request::Parts) -> Option<Asked> {
    if parts.version == Version::HTTP_2 && parts.method == http::Method::CONNECT {
        let websocket = parts
            .extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"));
        if !websocket {
            return None;
        }
        parts.method = http::Method::GET;
        return Some(Asked {
            protocols: WEBSOCKET,
            h2: true,
        });
    }
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let mut values = parts.headers.get_all(header::UPGRADE).iter();
    let (value, more) = (values.next()?, values.next());
    if more.is_some() {
        return None;
    }
    let named = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    named.then(|| Asked {
        protocols: value.clone(),
        h2: false,
    })
}

/// A copy of the request head as decided on (hop-by-hop headers already gone), to decide it
/// again while the tunnel lives.
pub(super) fn head_copy(parts: &http::request::Parts) -> http::request::Parts {
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// Sends the upgrade request upstream; on `101`, leaves the tunnel with the client's
/// connection (HTTP/1.1: the connection's task runs it) or stream (HTTP/2: a task of its
/// own) and answers `101` (HTTP/2: `200`).
pub(super) async fn open(
    ctx: &mut Ctx<'_>,
    upstream: &Upstream,
    mut req: Request<RequestBody>,
    asked: Asked,
    on_client: OnUpgrade,
    bounds: Bounds,
    opts: crate::upstream::SendOptions,
) -> Result<Response<ResponseBody>, Failure> {
    let Asked {
        protocols: asked,
        h2,
    } = asked;
    // Why: bytes after the head of an upgrade request belong to the new protocol; a body
    // would be read as its first frames by the upstream but was never decided on.
    if !http_body::Body::is_end_stream(req.body()) {
        return Err(Failure::Malformed(
            StatusCode::BAD_REQUEST,
            "upgrade_with_body",
        ));
    }
    // An HTTP/2 stream's tunnel counts as a connection (`server.max_connections`), before
    // anything is asked of the upstream.
    let open = match h2 {
        false => None,
        true => match ctx.conn.tunnel.mark_open() {
            Some(open) => Some(open),
            None => {
                ctx.shared.metrics.limit("max_connections");
                return Err(Failure::Failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                ));
            }
        },
    };
    let headers = req.headers_mut();
    headers.insert(header::CONNECTION, UPGRADE_TOKEN);
    headers.insert(header::UPGRADE, asked.clone());
    // RFC 8441 has no key: the gateway makes the HTTP/1.1 handshake's, and checks its answer.
    // An HTTP/1.1 WebSocket handshake keeps the client's one key (or gets the gateway's).
    //
    // Why the answer to every WebSocket handshake is checked: a `101` naming `websocket`
    // opened the tunnel, so an upstream endpoint whose status an attacker can influence
    // answered `101` without switching, and the bytes after the handshake reached it as
    // requests nobody decided on (WebSocket smuggling). A real switch proves itself with
    // `Sec-WebSocket-Accept` (RFC 6455 §4.2.2).
    // Regression: tests (it) edge::a_101_without_the_websocket_accept_opens_no_tunnel
    //
    // Why by name, whatever version follows: `websocket/13` (which a rule relaying
    // `websocket` allows) asked for no key and had no accept checked, so an upstream echoing
    // it in a `101` opened a tunnel without the proof.
    // Regression: tests (it) edge::a_101_without_the_websocket_accept_opens_no_tunnel
    let asks_websocket = h2 || asked.as_bytes().split(|b| *b == b',').any(names_websocket);
    let key = match (asks_websocket, h2) {
        (false, _) => None,
        (true, true) => Some(websocket_key()),
        // The client's key, sent once or repeated alike; none, or two that differ, is no
        // handshake the client could check (RFC 6455 §4.2.1: refused).
        (true, false) => {
            let mut keys = headers.get_all(SEC_WEBSOCKET_KEY).iter();
            let first = keys.next().cloned();
            match first {
                Some(k) if keys.all(|other| *other == k) => Some(k),
                _ => {
                    return Err(Failure::Malformed(
                        StatusCode::BAD_REQUEST,
                        "invalid_websocket_key",
                    ));
                }
            }
        }
    };
    if let Some(key) = &key {
        headers.insert(SEC_WEBSOCKET_KEY, key.clone());
        headers
            .entry(SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
    }
    // Within the response timeout (`Upstream::send_upgrade`, which records a timeout
    // against its endpoint).
    let (mut resp, counted) = match upstream.send_upgrade(req, opts).await {
        Ok(sent) => sent,
        Err(crate::upstream::SendError::Timeout) => {
            ctx.shared
                .metrics
                .upstream_error(&upstream.name, "upstream_timeout");
            return Err(Failure::Failed(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
            ));
        }
        Err(e) => {
            let (status, kind) = e.status_and_kind();
            ctx.shared.metrics.upstream_error(&upstream.name, kind);
            tracing::debug!(upstream = &*upstream.name, error = %e, reason = kind, "Upgrade request failed");
            return Err(Failure::Failed(status, kind));
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Why: a 2xx to an extended CONNECT opens the tunnel at the client's end; one the
        // upstream did not switch for must not.
        if h2 && resp.status().is_success() {
            ctx.shared
                .metrics
                .upstream_error(&upstream.name, "upstream_upgrade_refused");
            return Err(Failure::Failed(
                StatusCode::BAD_GATEWAY,
                "upstream_upgrade_refused",
            ));
        }
        // Declined (say 400 or 426): an ordinary answer.
        let (mut parts, body) = resp.into_parts();
        hop_by_hop::strip(&mut parts.headers);
        parts.version = Version::HTTP_11;
        // Why: its body had no idle timeout, as every other response's has.
        // Regression: tests (it) edge::a_declined_upgrades_stalled_answer_is_cut
        let metrics = std::sync::Arc::clone(&ctx.shared.metrics);
        let clock = ctx.snapshot.clock.clone();
        let mut body = PooledBody::unpooled(body).with_idle_timeout(
            bounds.answer_idle,
            None,
            (
                std::sync::Arc::clone(&metrics),
                std::sync::Arc::clone(&upstream.name),
            ),
        );
        // Why: a long answer (an SSE stream the upstream gave instead of switching) outlived
        // its credential and every re-check, which the same request without `Upgrade` does
        // not: it is watched as any response of the rule is (`proxy::service::forward`).
        // Regression: tests (it) edge::a_declined_upgrades_answer_ends_with_its_credential
        let Bounds {
            expires_at,
            recheck,
            ..
        } = bounds;
        if let (None, Some(at)) = (&recheck, expires_at) {
            body = body.with_expiry(at, clock.clone(), std::sync::Arc::clone(&metrics));
        }
        let body = body::streamed(counted.follow(body));
        let body = match recheck {
            None => body,
            Some((every, recheck)) => {
                super::watched::watch(body, expires_at, every, recheck, clock, metrics)
            }
        };
        return Ok(Response::from_parts(parts, body));
    }
    // The upstream must switch to what the client asked for, nothing else.
    let agreed = resp
        .headers()
        .get(header::UPGRADE)
        .filter(|p| {
            let asked = asked.as_bytes();
            p.to_str().is_ok_and(|p| {
                p.split(',').map(str::trim).all(|t| {
                    asked
                        .split(|b| *b == b',')
                        .any(|a| a.trim_ascii().eq_ignore_ascii_case(t.as_bytes()))
                })
            })
        })
        .cloned();
    let switched_to_websocket = h2
        || agreed
            .as_ref()
            .is_some_and(|a| a.as_bytes().split(|b| *b == b',').any(names_websocket));
    let accepted = !switched_to_websocket
        || key.as_ref().is_some_and(|k| {
            resp.headers().get(SEC_WEBSOCKET_ACCEPT) == Some(&websocket_accept(k))
        });
    let (Some(agreed), true) = (agreed, accepted) else {
        ctx.shared
            .metrics
            .upstream_error(&upstream.name, "upstream_upgrade_mismatch");
        return Err(Failure::Failed(
            StatusCode::BAD_GATEWAY,
            "upstream_upgrade_mismatch",
        ));
    };
    let on_upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    hop_by_hop::strip(&mut parts.headers);
    // The tunnel's framing is WebSocket's when both ends agreed on it (an extended CONNECT is
    // one by definition): its close frames are then the gateway's to write.
    let websocket = h2 || names_websocket(agreed.as_bytes());
    let tunnel = super::tunnel::run(
        on_client,
        on_upstream,
        bounds,
        websocket,
        ctx.snapshot.clock.clone(),
        std::sync::Arc::clone(ctx.shared),
        ctx.request_id.clone(),
    );
    // In flight on its endpoint until the tunnel closes.
    let tunnel = async move {
        let _counted = counted;
        tunnel.await;
    };
    if h2 {
        parts.status = StatusCode::OK;
        parts.version = Version::HTTP_2;
        parts.headers.remove(SEC_WEBSOCKET_ACCEPT);
        // The tunnel ends itself on the drain, with its close frames.
        tokio::spawn(async move {
            let _open = open;
            tunnel.await;
        });
    } else {
        parts.version = Version::HTTP_11;
        parts.headers.insert(header::CONNECTION, UPGRADE_TOKEN);
        parts.headers.insert(header::UPGRADE, agreed);
        ctx.conn.tunnel.set(Box::pin(tunnel));
    }
    Ok(Response::from_parts(parts, body::full(Bytes::new())))
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn websocket_key() -> HeaderValue {
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut nonce).is_err() {
        // Not a secret, only a nonce: the request-id generator will do.
        nonce[..8].copy_from_slice(&crate::server::request_id::random_u64().to_le_bytes());
        nonce[8..].copy_from_slice(&crate::server::request_id::random_u64().to_le_bytes());
    }
    let text = base64::engine::general_purpose::STANDARD.encode(nonce);
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

/// The `Sec-WebSocket-Accept` an upstream must answer `key` with (RFC 6455 §4.2.2).
fn websocket_accept(key: &HeaderValue) -> HeaderValue {
    use base64::Engine as _;
    let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    d.update(key.as_bytes());
    d.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let text = base64::engine::general_purpose::STANDARD.encode(d.finish().as_ref());
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("-"))
}

/// Whether one protocol of an `Upgrade` list (`websocket`, `WebSocket/13`) is WebSocket,
/// whatever version it names.
fn names_websocket(protocol: &[u8]) -> bool {
    let name = protocol.split(|b| *b == b'/').next().unwrap_or_default();
    name.trim_ascii().eq_ignore_ascii_case(b"websocket")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_6455_example() {
        let key = HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(websocket_accept(&key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(websocket_key().len(), 24);
        assert_ne!(websocket_key(), websocket_key());
    }
}
