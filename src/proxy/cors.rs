//! CORS at the proxy door, for the rules that configure it. (The preflight check itself is
//! door-neutral, [`crate::authz::edge::preflight`]: the Envoy doors answer preflights the same
//! way, see `door` and `extauthz::grpc`.)
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by
//! the gateway itself: the rule is the one the *real* request would match (its method is the
//! one asked for), and the answer is 204 with the CORS headers for an allowed origin, method
//! and headers, or 403 without any `Access-Control-Allow-*` header. Neither needs a credential
//! (browsers send none with a preflight), and neither reaches the upstream: an answer made of
//! the config's own values lets nothing through. The real request is decided as any other;
//! its answer (allowed, denied or failed) carries the headers for an allowed origin, so a
//! script can read a 401 too.
//!
//! Invariants: `Access-Control-Allow-Origin` is the request's origin echoed only when the
//! rule names it exactly, never `*`; every answer of such a rule says `Vary: Origin`; an
//! upstream's own `Access-Control-Allow-Origin` and `-Credentials` are replaced by the rule's
//! word.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::service::Ctx;
use crate::authz::edge::{Cors, VARY_ORIGIN};
use crate::body::ResponseBody;
use crate::decision::Refusal;
use crate::request::RequestFacts;
use crate::request::facts::Door;
use crate::telemetry::metrics::Outcome;

/// The gateway's answer to a preflight for a rule with CORS; `None` when the request is no
/// preflight, or the rule it is for has no CORS (then it is decided as any request).
pub(super) fn preflight(
    ctx: &mut Ctx<'_>,
    facts: &RequestFacts<'_>,
) -> Option<Response<ResponseBody>> {
    let (rule, checked) = crate::authz::edge::preflight(ctx.snapshot, facts)?;
    ctx.log.rule = Some(rule);
    Some(match checked {
        Ok(headers) => {
            ctx.reason = Some(crate::door::CORS_PREFLIGHT);
            let mut resp = Response::new(crate::body::full(bytes::Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            let h = resp.headers_mut();
            for (name, value) in headers {
                h.insert(name, value);
            }
            resp
        }
        Err(refused) => {
            let reason = refused.as_str();
            ctx.shared.metrics.denial(Door::Proxy, reason);
            (ctx.outcome, ctx.reason) = (Outcome::Deny, Some(reason));
            let mut resp = super::service::refusal_response(Refusal::error(
                StatusCode::FORBIDDEN,
                reason,
                ctx.request_id,
            ));
            let (name, value) = VARY_ORIGIN;
            resp.headers_mut().append(name, value);
            resp
        }
    })
}

/// The CORS headers of a real response on a CORS rule, to a request from `origin` (`None`:
/// it named none, and gets none, but still `Vary: Origin`).
pub(super) fn decorate(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
    headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    // An origin the rule does not allow reads nothing: the upstream's list of what it may
    // read goes with the rest. Regression: tests (it) edge::cors_rule_answers_without_origin_vary_and_carry_no_upstream_acao
    if !origin.is_some_and(|o| cors.allows_origin(o)) {
        headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
    }
    for (name, value) in cors.response_headers(origin) {
        // `Vary` adds to the upstream's own; the rest is the rule's word over the upstream's.
        if name == header::VARY {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}
