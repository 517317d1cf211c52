//! The forward-auth door: nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`,
//! APISIX `forward-auth` and the Kong plugin under `examples/kong/` ask whether a request may
//! pass, describing it in headers; 2xx allows, with the identity headers in the answer for the
//! peer to copy (`auth_request_set`, `authResponseHeaders`, `copy_headers`).
//!
//! How the original request is described (these headers ARE the request, so the door only
//! believes them from its configured `peers`):
//!
//! | what | headers, in order of preference |
//! |---|---|
//! | method | `X-Forwarded-Method` (Traefik, Caddy, APISIX), `X-Original-Method` (nginx): required |
//! | target | `X-Forwarded-Uri` (Traefik, Caddy, APISIX), `X-Original-URI` (nginx): origin form, required |
//! | host | `X-Forwarded-Host`: required |
//! | scheme | `X-Forwarded-Proto` (`http` or `https`), else `http` |
//! | client | `X-Forwarded-For`, read through the door's peers and `server.trusted_proxies` |
//!
//! An allowed request's answer carries the identity headers to set (and `x-real-ip`,
//! `x-forwarded-host`), and `x-portcullis-remove`: the comma-separated names of the headers
//! the upstream must not get (spoofable ones, a stripped credential). The door cannot remove
//! them itself: the peer must, by applying that list or by clearing those names in its own
//! configuration (the shipped examples do both where the peer can).
//!
//! Two headers of one row that disagree, a repeated one, or a missing one are refused (400): a
//! peer is never second-guessed. Nothing falls back on the door request's own method or `Host`:
//! nginx's `auth_request` subrequest is always a GET to the door's own host, so a `DELETE` for
//! `admin.example` would be judged as a GET for `portcullis`.
//! Refusals carry their status unless `status_map` says the peer cannot pass it (nginx turns
//! anything but 2xx, 401 and 403 into 500); then the mapped status goes out with the real one in
//! `x-portcullis-status` and the reason code in `x-portcullis-error`, which the shipped nginx
//! config turns back into the real answer.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Response};
use http_body_util::Full;

use crate::decision::{Allow, Refusal};
use crate::door::{self, Described, HttpDoor, Undescribed, scheme, single};
use crate::request::facts::Door;
use crate::snapshot::DoorSettings;

/// The forward-auth door.
#[derive(Debug, Default)]
pub struct ForwardAuth;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl HttpDoor for ForwardAuth {
    const DOOR: Door = Door::ForwardAuth;

    fn describe(
        &self,
        _settings: &DoorSettings,
        parts: &mut http::request::Parts,
    ) -> Result<Described, Undescribed> {
        let h = &parts.headers;
        // Why: the subrequest's own method and host are the peer's, not the client's; a
        // DELETE judged by GET-only allow rules, or a request for a `hosts:`-scoped deny rule
        // judged under the door's own host, passed. Regression: tests (it)
        // doors::forward_auth_bad_descriptions (missing_original_method, missing_original_host)
        let method = one_of(
            h,
            &X_FORWARDED_METHOD,
            &X_ORIGINAL_METHOD,
            "ambiguous_method",
        )?
        .ok_or(Undescribed("missing_original_method"))?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| Undescribed("invalid_original_method"))?;
        let target = one_of(h, &X_FORWARDED_URI, &X_ORIGINAL_URI, "ambiguous_uri")?
            .ok_or(Undescribed("missing_original_uri"))?;
        // Why: an absolute or empty target would be read differently by the peer's upstream
        // than by the rules. Regression: tests (it) doors::forward_auth_bad_descriptions
        if !target.starts_with('/') {
            return Err(Undescribed("invalid_original_uri"));
        }
        let authority =
            single(h, &X_FORWARDED_HOST)?.ok_or(Undescribed("missing_original_host"))?;
        let scheme = scheme(h)?;
        let (target, authority) = (target.to_owned(), authority.to_owned());
        let mut headers = std::mem::take(&mut parts.headers);
        for name in [
            X_FORWARDED_METHOD,
            X_ORIGINAL_METHOD,
            X_FORWARDED_URI,
            X_ORIGINAL_URI,
        ] {
            headers.remove(name);
        }
        Ok(Described {
            method,
            scheme,
            authority: Some(authority),
            target,
            headers,
        })
    }

    fn allow(&self, allow: &Allow) -> Response<Full<Bytes>> {
        let mut resp = door::allow_response(allow);
        // Why: this door cannot remove a header from what its peer forwards, and the peers'
        // own configuration only clears the names written in it. The list lets a peer that
        // can act on it (the Kong plugin, an nginx `map`) strip exactly what the proxy door
        // would. Regression: tests (it) doors::forward_auth_names_what_to_remove
        if let Some(v) = door::removal_list(&allow.mutation) {
            resp.headers_mut().insert(door::REMOVE_HEADER, v);
        }
        resp
    }

    fn deny(&self, settings: &DoorSettings, refusal: Refusal) -> Response<Full<Bytes>> {
        let map = match settings {
            DoorSettings::ForwardAuth { status_map, .. } => &status_map[..],
            _ => &[],
        };
        door::render_refusal(refusal, map)
    }
}

/// The value of `first` or `second` (at most one value each; equal when both are present).
fn one_of<'h>(
    h: &'h HeaderMap,
    first: &HeaderName,
    second: &HeaderName,
    ambiguous: &'static str,
) -> Result<Option<&'h str>, Undescribed> {
    match (single(h, first)?, single(h, second)?) {
        (Some(a), Some(b)) if a != b => Err(Undescribed(ambiguous)),
        (Some(a), _) | (None, Some(a)) => Ok(Some(a)),
        (None, None) => Ok(None),
    }
}
