//! The upgrade request (a WebSocket handshake) of a rule that relays it: sent upstream on a
//! connection of its own with the same header mutation as any allowed request (identity
//! headers set, spoofed and credential headers removed, forwarding headers, request id,
//! trace context), then `Connection: upgrade` and the protocol asked for. The upstream's
//! `101` goes back to the client and hands both connections to [`super::tunnel`]; any other
//! answer is relayed as a normal response.
//!
//! Only HTTP/1.1 upgrades: HTTP/2 has no `Upgrade` (RFC 9113 §8.6). WebSockets over HTTP/2
//! (RFC 8441 extended CONNECT) are not served yet: see the README.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::upgrade::OnUpgrade;

use super::service::{Ctx, Failure};
pub(super) use super::tunnel::{Bounds, Recheckable};
use crate::body::{self, RequestBody, ResponseBody};
use crate::server::hop_by_hop;
use crate::upstream::{PooledBody, SendError, Upstream};

const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// The protocols a request asks to switch to: its one `Upgrade` header, on HTTP/1.1 with
/// `upgrade` named in `Connection`. Read before the hop-by-hop headers are removed.
pub(super) fn asked(parts: &http::request::Parts) -> Option<HeaderValue> {
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
    named.then(|| value.clone())
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
/// connection and answers `101`.
pub(super) async fn open(
    ctx: &mut Ctx<'_>,
    upstream: &Upstream,
    mut req: Request<RequestBody>,
    asked: HeaderValue,
    on_client: OnUpgrade,
    bounds: Bounds,
) -> Result<Response<ResponseBody>, Failure> {
    // Why: bytes after the head of an upgrade request belong to the new protocol; a body
    // would be read as its first frames by the upstream but was never decided on.
    if !http_body::Body::is_end_stream(req.body()) {
        return Err(Failure::Malformed(
            StatusCode::BAD_REQUEST,
            "upgrade_with_body",
        ));
    }
    let headers = req.headers_mut();
    headers.insert(header::CONNECTION, UPGRADE_TOKEN);
    headers.insert(header::UPGRADE, asked.clone());
    let sent = tokio::time::timeout(upstream.response_timeout, upstream.send_upgrade(req)).await;
    let mut resp = match sent {
        Ok(Ok(resp)) => resp,
        Err(_) => {
            ctx.shared.metrics.upstream_error("timeout");
            return Err(Failure::Failed(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
            ));
        }
        Ok(Err(e)) => {
            let (status, kind) = match &e {
                SendError::ConnectTimeout => {
                    (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout")
                }
                SendError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
                SendError::Tls(_) => (StatusCode::BAD_GATEWAY, "upstream_tls"),
                SendError::Http(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            };
            ctx.shared.metrics.upstream_error(kind);
            tracing::debug!(upstream = &*upstream.name, error = %e, reason = kind, "Upgrade request failed");
            return Err(Failure::Failed(status, kind));
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Declined (say 400 or 426): an ordinary answer.
        let (mut parts, body) = resp.into_parts();
        hop_by_hop::strip(&mut parts.headers);
        parts.version = Version::HTTP_11;
        return Ok(Response::from_parts(
            parts,
            body::streamed(PooledBody::unpooled(body)),
        ));
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
    let Some(agreed) = agreed else {
        ctx.shared.metrics.upstream_error("upgrade_mismatch");
        return Err(Failure::Failed(
            StatusCode::BAD_GATEWAY,
            "upstream_upgrade_mismatch",
        ));
    };
    let on_upstream = hyper::upgrade::on(&mut resp);
    let (mut parts, _) = resp.into_parts();
    hop_by_hop::strip(&mut parts.headers);
    parts.version = Version::HTTP_11;
    parts.headers.insert(header::CONNECTION, UPGRADE_TOKEN);
    parts.headers.insert(header::UPGRADE, agreed);
    ctx.conn.tunnel.set(Box::pin(super::tunnel::run(
        on_client,
        on_upstream,
        bounds,
        ctx.snapshot.clock.clone(),
        std::sync::Arc::clone(ctx.shared),
        ctx.request_id.clone(),
    )));
    Ok(Response::from_parts(parts, body::full(Bytes::new())))
}
