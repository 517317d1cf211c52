//! One access-log line per request, at target `access`.
//!
//! Fields: door, listener, method, host, path (canonical, without the query: queries may carry credentials),
//! status, decision, rule, reason, latency, request id, trace id, principal id. Never a header value, token or cookie.

use std::time::Duration;

/// What one access-log line records.
#[derive(Debug)]
pub struct AccessRecord<'a> {
    /// The door (`proxy`, `envoy-grpc`, `envoy-http`, `forward-auth`).
    pub door: &'static str,
    /// Listener name.
    pub listener: &'a str,
    /// Request method.
    pub method: &'a str,
    /// Host as decided on.
    pub host: &'a str,
    /// Canonical path (raw path when the request was rejected before canonicalisation).
    pub path: &'a str,
    /// Response status.
    pub status: u16,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// Deciding rule.
    pub rule: Option<&'a str>,
    /// Reason code of a denial or error; of an allow, the refusal a fail-open setting let
    /// through (`delegate_unavailable`, `rate_limit_unavailable`).
    pub reason: Option<&'static str>,
    /// Request id.
    pub request_id: &'a str,
    /// W3C trace id (32 hex digits), where the door traces.
    pub trace_id: Option<&'a str>,
    /// The authenticated principal's id, if any.
    pub principal: Option<&'a str>,
    /// Client address as decided on.
    pub client_ip: std::net::IpAddr,
    /// Time to the response head.
    pub latency: Duration,
}

/// Writes the line.
pub fn log(r: &AccessRecord<'_>) {
    tracing::info!(
        target: "access",
        door = r.door,
        listener = r.listener,
        method = r.method,
        host = r.host,
        path = r.path,
        status = r.status,
        decision = r.decision,
        rule = r.rule.unwrap_or("-"),
        reason = r.reason.unwrap_or("-"),
        request_id = r.request_id,
        trace_id = r.trace_id.unwrap_or("-"),
        principal = r.principal.unwrap_or("-"),
        client_ip = %r.client_ip,
        latency_us = u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX),
        "Request"
    );
}
