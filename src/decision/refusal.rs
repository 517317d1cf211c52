//! [`Refusal`]: the one answer every door gives for a denial or a failure, and its renderings:
//! an HTTP response (proxy, Envoy HTTP mode, forward auth) and a gRPC status code (Envoy's
//! `Check`). A door only translates: status, challenge, redirect, throttle headers and body
//! are decided here.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::Full;

use crate::ratelimit::Throttle;

/// The answer a door gives for a denial: the same in every door.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The status.
    pub status: StatusCode,
    /// `WWW-Authenticate`, for 401s, the ambiguous-credential 400 and a missing scope.
    pub challenge: Option<HeaderValue>,
    /// `Location`, for a login redirect.
    pub location: Option<HeaderValue>,
    /// A short JSON body (none for a redirect).
    pub body: Option<String>,
    /// The reason code the client sees (the body's `error`).
    pub code: &'static str,
    /// Over a rate limit: `Retry-After` and `RateLimit-*`.
    pub throttle: Option<Throttle>,
    /// The CORS headers of a refusal on a rule with CORS, at a decision door (the proxy door
    /// adds its own as it answers): a script from an allowed origin can read a 401 too.
    pub cors: Vec<(HeaderName, HeaderValue)>,
}

// === impl Refusal ===

impl Refusal {
    /// The headers of the answer besides `Content-Type`: the challenge, the redirect, and
    /// for a 429 `Retry-After`, `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` (draft-ietf-httpapi-ratelimit-headers).
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let throttle = self.throttle.iter().flat_map(|t| {
            [
                (header::RETRY_AFTER, HeaderValue::from(t.retry_after)),
                (
                    HeaderName::from_static("ratelimit-limit"),
                    HeaderValue::from(t.limit),
                ),
                (
                    HeaderName::from_static("ratelimit-remaining"),
                    HeaderValue::from_static("0"),
                ),
                (
                    HeaderName::from_static("ratelimit-reset"),
                    HeaderValue::from(t.retry_after),
                ),
            ]
        });
        // Why: a 503 of the gateway's (keys, introspection, Redis or a delegate unavailable,
        // no decision in time) is temporary, as the overloaded 503 says with its
        // `Retry-After: 1`; these said nothing, so clients retried at once or gave up.
        // Regression: tests::unavailable_refusals_say_when_to_retry
        let retry = (self.status == StatusCode::SERVICE_UNAVAILABLE && self.throttle.is_none())
            .then_some((header::RETRY_AFTER, HeaderValue::from_static("1")));
        self.challenge
            .iter()
            .map(|c| (header::WWW_AUTHENTICATE, c.clone()))
            .chain(self.location.iter().map(|l| (header::LOCATION, l.clone())))
            .chain(retry)
            .chain(throttle)
            .chain(self.cors.iter().cloned())
    }
}

/// gRPC status codes (`google.rpc.Code`) the doors answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum GrpcCode {
    /// 0: allowed.
    Ok = 0,
    /// 3: a malformed request (400).
    InvalidArgument = 3,
    /// 4: the request (its body, a Check message) did not arrive in time (408).
    DeadlineExceeded = 4,
    /// 5: a rule hiding its route (404).
    NotFound = 5,
    /// 7: denied by policy (403, other 4xx).
    PermissionDenied = 7,
    /// 8: over a rate limit (429), or a message larger than allowed (413), as gRPC
    /// libraries answer one.
    ResourceExhausted = 8,
    /// 12: a method the gateway does not serve (405, 501).
    Unimplemented = 12,
    /// 14: what is needed to decide is unavailable (502, 503, 504).
    Unavailable = 14,
    /// 16: no valid credential (401, or a login redirect).
    Unauthenticated = 16,
}

// === impl Refusal (renderings) ===

impl Refusal {
    /// A refusal before or after the decision that is not a denial (a malformed request, an
    /// upstream failure): a status and a reason code, nothing else.
    pub fn error(status: StatusCode, reason: &'static str, request_id: &HeaderValue) -> Self {
        Self {
            status,
            challenge: None,
            location: None,
            body: Some(super::outcome::error_body(reason, request_id, None)),
            code: reason,
            throttle: None,
            cors: Vec::new(),
        }
    }

    /// The gRPC code matching the status.
    pub fn grpc_code(&self) -> GrpcCode {
        GrpcCode::for_status(self.status)
    }

    /// The HTTP response: the status, the headers, `Cache-Control: no-store` and the JSON
    /// body (none for a redirect).
    pub fn into_response(self) -> http::Response<Full<Bytes>> {
        let mut resp = match &self.body {
            Some(b) => {
                let mut resp = http::Response::new(Full::new(Bytes::from(b.clone())));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            None => http::Response::new(Full::new(Bytes::new())),
        };
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers() {
            h.insert(name, value);
        }
        resp
    }
}

// === impl GrpcCode ===

impl GrpcCode {
    /// The code for an HTTP status, as Envoy's ext_authz maps them back.
    ///
    /// Why 408, 413, 405 and 501 have their own: a gRPC client's over-large message got
    /// INVALID_ARGUMENT where gRPC libraries answer RESOURCE_EXHAUSTED, a stalled body and a
    /// refused method PERMISSION_DENIED, which says the caller lacks a right.
    /// Regression: tests::grpc_codes_follow_the_status
    pub fn for_status(status: StatusCode) -> Self {
        match status.as_u16() {
            200..=299 => Self::Ok,
            300..=399 | 401 => Self::Unauthenticated,
            400 | 414 | 421 | 431 => Self::InvalidArgument,
            404 => Self::NotFound,
            408 => Self::DeadlineExceeded,
            413 | 429 => Self::ResourceExhausted,
            405 | 501 => Self::Unimplemented,
            500..=599 => Self::Unavailable,
            _ => Self::PermissionDenied,
        }
    }

    /// Its number.
    pub fn as_i32(self) -> i32 {
        self as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailable_refusals_say_when_to_retry() {
        let id = HeaderValue::from_static("req-1");
        let retry = |status: u16| {
            let r = Refusal::error(StatusCode::from_u16(status).unwrap(), "x", &id);
            r.headers()
                .filter(|(n, _)| *n == header::RETRY_AFTER)
                .map(|(_, v)| v)
                .collect::<Vec<_>>()
        };
        assert_eq!(retry(503), [HeaderValue::from_static("1")]);
        for status in [400, 401, 403, 502, 504] {
            assert!(retry(status).is_empty(), "{status}");
        }
    }

    #[test]
    fn grpc_codes_follow_the_status() {
        for (status, code) in [
            (200, GrpcCode::Ok),
            (302, GrpcCode::Unauthenticated),
            (400, GrpcCode::InvalidArgument),
            (401, GrpcCode::Unauthenticated),
            (403, GrpcCode::PermissionDenied),
            (404, GrpcCode::NotFound),
            (405, GrpcCode::Unimplemented),
            (408, GrpcCode::DeadlineExceeded),
            (409, GrpcCode::PermissionDenied),
            (413, GrpcCode::ResourceExhausted),
            (414, GrpcCode::InvalidArgument),
            (429, GrpcCode::ResourceExhausted),
            (501, GrpcCode::Unimplemented),
            (503, GrpcCode::Unavailable),
            (504, GrpcCode::Unavailable),
        ] {
            assert_eq!(
                GrpcCode::for_status(StatusCode::from_u16(status).unwrap()),
                code,
                "{status}"
            );
        }
        assert_eq!(GrpcCode::Unauthenticated.as_i32(), 16);
        assert_eq!(GrpcCode::ResourceExhausted.as_i32(), 8);
    }

    #[test]
    fn rendered_response_carries_status_headers_and_body() {
        let id = HeaderValue::from_static("r1");
        let resp = Refusal::error(StatusCode::BAD_GATEWAY, "upstream_error", &id).into_response();
        assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        assert_eq!(resp.headers()["content-type"], "application/json");
    }
}
