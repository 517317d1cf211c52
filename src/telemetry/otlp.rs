//! OpenTelemetry spans over OTLP/HTTP (JSON encoding): one server span per request a door
//! answers, with the decision, the reason code, the rule and the door as attributes.
//!
//! Why not the opentelemetry crates: `opentelemetry_sdk` and `opentelemetry-otlp` bring the
//! SDK's own batch processor (a thread of its own calling the exporter with a blocking
//! executor, or a runtime feature), `opentelemetry-proto`, and an HTTP client to wrap around
//! ours; for one span kind with seven attributes, a bounded queue and a task posting JSON
//! batches over the HTTP client the gateway already has are about 200 lines and no new
//! dependency (no build time on a 2-core machine). The wire format is OTLP 1.x's JSON
//! mapping (`/v1/traces`, ids in hex), which every OpenTelemetry collector accepts.
//!
//! Invariants: recording never blocks or allocates beyond one span record: a full queue
//! drops the span (counted in `dropped`); a failing collector costs the batch, never a
//! request; no header value, token or path reaches a span, only low-cardinality labels, the
//! rule's name and the request id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Uri, header};
use http_body_util::Full;
use tokio::sync::mpsc;

use super::trace_context::TraceContext;
use crate::authn::http_client::HttpClient;
use crate::config::raw::RawOtlp;

/// Spans sent in one request to the collector, at most.
const MAX_BATCH: usize = 512;
/// A collector's answer is read up to this size (it is discarded).
const MAX_ANSWER: usize = 64 * 1024;
/// Deadline of one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The exporter: a bounded queue in front of a background task.
#[derive(Debug)]
pub struct Otlp {
    tx: mpsc::Sender<Span>,
    /// Spans dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Batches the collector refused or never answered.
    pub failed: Arc<AtomicU64>,
    /// Batches the collector accepted.
    pub exported: Arc<AtomicU64>,
}

/// One finished request, as a span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Trace, parent and own span ids.
    pub trace_id: [u8; 16],
    /// The client's span, if it sent one.
    pub parent_id: Option<[u8; 8]>,
    /// The gateway's span.
    pub span_id: [u8; 8],
    /// The door (`proxy`, `forward-auth`, …).
    pub door: &'static str,
    /// Request method.
    pub method: http::Method,
    /// Response status.
    pub status: u16,
    /// `allow`, `deny` or `error`.
    pub decision: &'static str,
    /// Reason code of a denial or error.
    pub reason: Option<&'static str>,
    /// Deciding rule.
    pub rule: Option<Arc<str>>,
    /// The request id.
    pub request_id: http::HeaderValue,
    /// When the request arrived and when its answer was ready (Unix nanoseconds).
    pub start_unix_nanos: u64,
    /// See `start_unix_nanos`.
    pub end_unix_nanos: u64,
}

/// Why an `otlp` section does not compile.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OtlpError(String);

// === impl Otlp ===

impl Otlp {
    /// Checks the settings; `Ok` means [`Otlp::start`] will succeed.
    pub fn check(raw: &RawOtlp) -> Result<Uri, OtlpError> {
        let uri: Uri = raw
            .endpoint
            .parse()
            .map_err(|_| OtlpError(format!("`{}` is not a URL", raw.endpoint)))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.authority().is_some() => {}
            _ => {
                return Err(OtlpError(
                    "expected `http(s)://host:port/v1/traces`".to_owned(),
                ));
            }
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(OtlpError("credentials in the URL are refused".to_owned()));
        }
        if raw.max_queue == 0 || raw.interval.is_zero() {
            return Err(OtlpError(
                "max_queue and interval must be above zero".to_owned(),
            ));
        }
        Ok(uri)
    }

    /// Starts the exporter's task on the current runtime; `None` outside one (`check`,
    /// `explain`) or for settings [`Otlp::check`] refuses. The task ends, after a last
    /// export, once the exporter is dropped (a reload replaced its snapshot and the
    /// requests holding that snapshot are done).
    pub fn start(raw: &RawOtlp) -> Option<Arc<Self>> {
        let endpoint = Self::check(raw).ok()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::channel(raw.max_queue);
        let failed = Arc::new(AtomicU64::new(0));
        let exported = Arc::new(AtomicU64::new(0));
        let tls = crate::tls::server::client_config(None, false).ok()?;
        let task = Task {
            endpoint,
            client: HttpClient::new(&tls),
            resource: resource(&raw.service_name),
            interval: raw.interval,
            failed: Arc::clone(&failed),
            exported: Arc::clone(&exported),
        };
        runtime.spawn(task.run(rx));
        Some(Arc::new(Self {
            tx,
            dropped: AtomicU64::new(0),
            failed,
            exported,
        }))
    }

    /// Queues a span; never waits.
    pub fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// === impl Span ===

impl Span {
    /// A span for a request traced by `cx` that took `latency` and ends now.
    pub fn ending_now(cx: &TraceContext, latency: Duration) -> Self {
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let start = end.saturating_sub(latency);
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            trace_id: cx.trace_id,
            parent_id: cx.parent_id,
            span_id: cx.span_id,
            door: "",
            method: http::Method::GET,
            status: 0,
            decision: "",
            reason: None,
            rule: None,
            request_id: http::HeaderValue::from_static("-"),
            start_unix_nanos: nanos(start),
            end_unix_nanos: nanos(end),
        }
    }

    fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let hex = |b: &[u8]| crate::secret::hex(b);
        let string = |k: &str, v: &str| json!({"key": k, "value": {"stringValue": v}});
        let mut attributes = vec![
            string("portcullis.door", self.door),
            string("portcullis.decision", self.decision),
            string("http.request.method", self.method.as_str()),
            json!({"key": "http.response.status_code", "value": {"intValue": self.status.to_string()}}),
            string(
                "portcullis.request_id",
                self.request_id.to_str().unwrap_or("-"),
            ),
        ];
        if let Some(r) = self.reason {
            attributes.push(string("portcullis.reason", r));
        }
        if let Some(r) = &self.rule {
            attributes.push(string("portcullis.rule", r));
        }
        let mut span = json!({
            "traceId": hex(&self.trace_id),
            "spanId": hex(&self.span_id),
            "name": format!("{} {}", self.door, self.method),
            // SPAN_KIND_SERVER
            "kind": 2,
            "startTimeUnixNano": self.start_unix_nanos.to_string(),
            "endTimeUnixNano": self.end_unix_nanos.to_string(),
            "attributes": attributes,
            // STATUS_CODE_ERROR for the gateway's own failures; unset otherwise (a denial is
            // the gateway working).
            "status": {"code": if self.status >= 500 { 2 } else { 0 }},
        });
        if let Some(p) = self.parent_id {
            span["parentSpanId"] = json!(hex(&p));
        }
        span
    }
}

/// The exporter's background work.
struct Task {
    endpoint: Uri,
    client: HttpClient,
    resource: serde_json::Value,
    interval: Duration,
    failed: Arc<AtomicU64>,
    exported: Arc<AtomicU64>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Span>) {
        let mut batch = Vec::with_capacity(64);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                got = rx.recv() => match got {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= MAX_BATCH {
                            self.export(&mut batch).await;
                        }
                    }
                    None => {
                        self.export(&mut batch).await;
                        return;
                    }
                },
                _ = tick.tick() => self.export(&mut batch).await,
            }
        }
    }

    async fn export(&self, batch: &mut Vec<Span>) {
        if batch.is_empty() {
            return;
        }
        let spans: Vec<serde_json::Value> = batch.drain(..).map(|s| s.to_json()).collect();
        let body = serde_json::json!({
            "resourceSpans": [{
                "resource": self.resource,
                "scopeSpans": [{
                    "scope": {"name": "portcullis", "version": env!("CARGO_PKG_VERSION")},
                    "spans": spans,
                }],
            }],
        });
        let req = Request::post(self.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body.to_string())));
        let Ok(req) = req else {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match self.client.send(req, EXPORT_TIMEOUT, MAX_ANSWER).await {
            Ok(_) => {
                self.exported.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, reason = e.as_str(), "OTLP export failed");
            }
        }
    }
}

fn resource(service_name: &str) -> serde_json::Value {
    serde_json::json!({
        "attributes": [
            {"key": "service.name", "value": {"stringValue": service_name}},
            {"key": "service.version", "value": {"stringValue": env!("CARGO_PKG_VERSION")}},
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_json_carries_ids_and_attributes() {
        let cx = TraceContext {
            trace_id: [0xab; 16],
            parent_id: Some([1; 8]),
            span_id: [2; 8],
            flags: 1,
            state: None,
        };
        let mut s = Span::ending_now(&cx, Duration::from_millis(3));
        s.door = "proxy";
        s.decision = "deny";
        s.reason = Some("missing_credential");
        s.rule = Some("api".into());
        s.status = 401;
        let j = s.to_json();
        assert_eq!(j["traceId"], "abababababababababababababababab");
        assert_eq!(j["parentSpanId"], "0101010101010101");
        assert_eq!(j["spanId"], "0202020202020202");
        let attrs = j["attributes"].to_string();
        for want in [
            "\"portcullis.decision\"",
            "\"missing_credential\"",
            "\"portcullis.rule\"",
            "\"401\"",
        ] {
            assert!(attrs.contains(want), "{want} in {attrs}");
        }
        let start: u64 = j["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = j["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert_eq!(end - start, 3_000_000);
    }

    #[test]
    fn endpoints_are_checked() {
        let raw = |e: &str| RawOtlp {
            endpoint: e.into(),
            service_name: "s".into(),
            interval: Duration::from_secs(1),
            max_queue: 10,
        };
        assert!(Otlp::check(&raw("http://127.0.0.1:4318/v1/traces")).is_ok());
        for bad in [
            "127.0.0.1:4318",
            "ftp://x/v1/traces",
            "http://u:p@x/v1/traces",
        ] {
            assert!(Otlp::check(&raw(bad)).is_err(), "{bad}");
        }
    }
}
