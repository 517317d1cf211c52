//! Envoy's HTTP ext_authz mode: Envoy sends the original request's method, path (after
//! `http_service.path_prefix`) and the headers it is configured to pass; exactly 200 allows.
//!
//! On allow, the identity headers are in the answer (list them in
//! `authorization_response.allowed_upstream_headers` so Envoy sets them upstream) and
//! `x-envoy-auth-headers-to-remove` names every header Envoy must remove from the upstream
//! request: the client's copies of identity and other spoofable headers, and the verified
//! credential when its authenticator strips it. On deny, the status, `WWW-Authenticate` and
//! the JSON body are the proxy's (list `www-authenticate`, `location`, `retry-after`,
//! `ratelimit-*`, `x-portcullis-status` and `x-portcullis-error` in `allowed_client_headers`).
//!
//! Envoy takes any 5xx answer for a failed call, which its `failure_mode_allow: true` turns
//! into an allow. So a refusal the gateway decided never goes out as a 5xx here: a delegate or
//! the shared rate limit failing closed (503 `delegate_unavailable`, `rate_limit_unavailable`)
//! is a 403, its real status in `x-portcullis-status`. What could not be decided (keys never
//! fetched, introspection down, the door's deadline) stays a 503, as the gRPC door's
//! `UNAVAILABLE`, for Envoy's failure mode and `status_on_error` to decide.

use bytes::Bytes;
use http::{HeaderName, Response, StatusCode};
use http_body_util::Full;

use crate::decision::{Allow, Refusal};
use crate::door::{self, Described, HttpDoor, Undescribed};
use crate::request::facts::Door;
use crate::snapshot::DoorSettings;

/// Names the headers Envoy removes from the upstream request.
const HEADERS_TO_REMOVE: HeaderName = HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// Envoy's HTTP mode.
#[derive(Debug, Default)]
pub struct EnvoyHttp;

impl HttpDoor for EnvoyHttp {
    const DOOR: Door = Door::EnvoyHttp;
    const ANSWERS_PREFLIGHTS: bool = true;

    fn describe(
        &self,
        settings: &DoorSettings,
        parts: &mut http::request::Parts,
    ) -> Result<Described, Undescribed> {
        let prefix = match settings {
            DoorSettings::EnvoyHttp { path_prefix, .. } => &**path_prefix,
            _ => "",
        };
        let full = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |pq| pq.as_str());
        // Why: Envoy puts `path_prefix` before the original path; what follows it is the
        // request, and anything else was not sent by Envoy's http_service.
        // Regression: tests (it) doors::envoy_http_path_prefix
        // A `CONNECT` (whatever it names) and `OPTIONS *` go on, for the facts to refuse as
        // the proxy does (405, 400 `unsupported_target`) once the head's limits are checked.
        // Regression: tests (it) conformance ("connect authority form", "asterisk target")
        let target = full
            .strip_prefix(prefix)
            .filter(|t| crate::request::facts::door_takes_target(&parts.method, t))
            .ok_or(Undescribed("outside_path_prefix"))?;
        let authority = match parts.uri.authority() {
            Some(a) => Some(a.as_str()),
            // Why: this `Host` is the client's own (Envoy passes it on), read as the proxy
            // door reads it: the first one's text, and a second refused by the facts
            // (`multiple_hosts`, after the head's size, as there). Two, or one that is no
            // text, were refused as `repeated_description_header` and
            // `invalid_description_header` here, before the head's size.
            // Regression: tests (it) doors::envoy_http_refuses_a_host_as_the_proxy_does
            None => parts
                .headers
                .get(http::header::HOST)
                .map(|h| h.to_str().map_err(|_| Undescribed("invalid_host")))
                .transpose()?,
        };
        let scheme = door::scheme(&parts.headers)?;
        let describing = door::scheme_field_bytes(&parts.headers);
        let (authority, target) = (authority.map(str::to_owned), target.to_owned());
        Ok(Described {
            method: parts.method.clone(),
            scheme,
            authority,
            target,
            headers: std::mem::take(&mut parts.headers),
            describing,
        })
    }

    fn allow(&self, allow: &Allow) -> Response<Full<Bytes>> {
        let mut resp = door::allow_response(allow);
        if let Some(v) = door::removal_list(&allow.mutation) {
            resp.headers_mut().insert(HEADERS_TO_REMOVE, v);
        }
        resp
    }

    fn deny(&self, _settings: &DoorSettings, refusal: Refusal) -> Response<Full<Bytes>> {
        // Why: Envoy's HTTP client takes a 5xx for a failed call, and `failure_mode_allow:
        // true` allows a failed call: a delegate configured to fail closed would let
        // everyone through. Regression: tests (it)
        // delegate::fail_closed_delegate_is_a_denial_at_the_envoy_http_door
        if refusal.status.is_server_error() && !door::undecided(&refusal) {
            let status = refusal.status;
            return door::render_refusal(refusal, &[(status, StatusCode::FORBIDDEN)]);
        }
        door::render_refusal(refusal, &[])
    }
}
