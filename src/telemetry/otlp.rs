//! OpenTelemetry spans over OTLP/HTTP (protobuf): one server span per request a door
//! answers, with the decision, the reason code, the rule and the door as attributes.
//!
//! Built on the official crates: `opentelemetry_sdk`'s tracer and `BatchSpanProcessor`, and
//! `opentelemetry-otlp`'s HTTP exporter (`http-proto`, the encoding every collector accepts on
//! `/v1/traces`). The exporter sends through [`Transport`], `opentelemetry-http`'s
//! `HttpClient` implemented over the gateway's own hyper client (rustls, a deadline over the
//! exchange, a capped answer), so no second HTTP stack is built.
//!
//! The span carries the ids the gateway already chose and sent upstream in `traceparent`:
//! the client's trace (or the new one), the client's span as the remote parent, and the
//! gateway's span id. The SDK's `SpanBuilder` takes no ids, so the provider's id generator,
//! [`GatewayIds`], hands the tracer the ids of the span being built, set for the one
//! synchronous `build_with_context` call.
//!
//! Invariants:
//! - recording never blocks a request: at most `max_queue` spans wait for export, and a span
//!   past them is dropped before it is built (counted here: the SDK's processor keeps its own
//!   count of drops to itself, so the queue is counted in front of it, with the same bound,
//!   and the processor's own queue never fills);
//! - a failing collector costs the batch, on the processor's own thread, never a request;
//!   the export itself runs on the gateway's runtime, where the hyper client has its reactor;
//! - what became of each span is counted ([`span_counts`]: exported, failed, dropped, for
//!   `/metrics`), and a failed export is a warning, at most one a minute;
//! - no header value, token or path reaches a span: only low-cardinality labels, the rule's
//!   name and the request id;
//! - the config is the source of truth: the resource is built from it alone (no
//!   `OTEL_RESOURCE_ATTRIBUTES`), the endpoint, timeout and batching are set explicitly.
//!   (`OTEL_EXPORTER_OTLP_*HEADERS` still adds headers, as in every OpenTelemetry SDK.)

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Response, Uri, header};
use http_body_util::Full;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::HttpError;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer,
    SdkTracerProvider, SpanExporter,
};

use super::trace_context::TraceContext;
use crate::authn::http_client::{FetchError, HttpClient};
use crate::config::raw::RawOtlp;

/// Spans sent in one request to the collector, at most.
const MAX_BATCH: usize = 512;
/// A collector's answer is read up to this size.
const MAX_ANSWER: usize = 64 * 1024;
/// Deadline of one export attempt (and of the exporter's retries together).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Otlp::shutdown`] waits for the last export (README: "waiting at most 5 s").
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Failed exports are warned about at most once in this many seconds.
const WARN_EVERY_SECS: u64 = 60;

/// Spans exported, failed (their batch refused or not delivered) and dropped (the queue
/// full), since the process started, over every exporter reloads made.
static SPANS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
const EXPORTED: usize = 0;
const FAILED: usize = 1;
const DROPPED: usize = 2;
/// When a failed export was last warned about: seconds since [`EPOCH`], plus one (0 never).
static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
/// The monotonic origin of [`LAST_WARNED`] (a wall clock stepped back would silence it).
static EPOCH: std::sync::LazyLock<std::time::Instant> =
    std::sync::LazyLock::new(std::time::Instant::now);

/// Whether a failed export at `now` is warned about, the last warning having been at `last`
/// (seconds from [`EPOCH`] plus one; 0: never).
///
/// Why a function: `last == 0 || due && swapped` skipped the swap on the first warning, so
/// `LAST_WARNED` stayed 0 and every failed batch warned. Regression: tests::failed_exports_warn_once_a_minute
fn should_warn(last: u64, now: u64) -> bool {
    last == 0 || now >= last.saturating_add(WARN_EVERY_SECS)
}

/// What became of the spans recorded since the process started: `exported`, `failed`,
/// `dropped`.
pub fn span_counts() -> [(&'static str, u64); 3] {
    [
        ("exported", SPANS[EXPORTED].load(Ordering::Relaxed)),
        ("failed", SPANS[FAILED].load(Ordering::Relaxed)),
        ("dropped", SPANS[DROPPED].load(Ordering::Relaxed)),
    ]
}

/// The exporter: the SDK's tracer, whose provider owns the batch processor.
#[derive(Debug)]
pub struct Otlp {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
    /// Spans recorded and not yet handed to an export: the queue, counted in front of the
    /// processor's (see the module doc).
    queued: Arc<AtomicUsize>,
    max_queue: usize,
}

/// The exporter, counting what becomes of each batch and keeping [`Otlp::queued`].
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
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
    /// The method of the request decided on (unknown when a decision door refused the
    /// description before reading it).
    pub method: Option<http::Method>,
    /// Response status.
    pub status: u16,
    /// The `grpc-status` of a gRPC answer the gateway made (a refusal, an upstream failure:
    /// HTTP 200 with the code in its head).
    pub grpc_status: Option<i32>,
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

/// The provider's id generator: the ids of the span being built (see the module doc), or
/// random ones for a span built without them (none is: only [`Otlp::record`] builds spans).
#[derive(Debug)]
struct GatewayIds;

/// `opentelemetry-http`'s client over the gateway's: each export runs on the gateway's
/// runtime (the processor's thread has none), within [`EXPORT_TIMEOUT`] and [`MAX_ANSWER`].
#[derive(Debug)]
struct Transport {
    client: HttpClient,
    runtime: tokio::runtime::Handle,
}

thread_local! {
    /// The trace and span ids of the span [`Otlp::record`] is building on this thread.
    static BUILDING: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

// === impl Otlp ===

impl Otlp {
    /// Checks the settings; `Ok` means [`Otlp::start`] will succeed.
    pub fn check(raw: &RawOtlp) -> Result<Uri, OtlpError> {
        if crate::secret::may_hold_credentials_anywhere(&raw.endpoint) {
            return Err(OtlpError("credentials in the URL are refused".to_owned()));
        }
        let uri: Uri = raw.endpoint.parse().map_err(|_| {
            OtlpError(format!(
                "`{}` is not a URL",
                crate::secret::redacted_url(&raw.endpoint)
            ))
        })?;
        match uri.scheme_str() {
            Some("http" | "https")
                if uri
                    .authority()
                    .is_some_and(|a| !crate::config::port_fits(a.as_str())) =>
            {
                return Err(OtlpError(
                    "the port must be a number from 0 to 65535".to_owned(),
                ));
            }
            Some("http" | "https") if uri.authority().is_some() => {}
            _ => {
                return Err(OtlpError(
                    "expected `http(s)://host:port/v1/traces`".to_owned(),
                ));
            }
        }
        if raw.max_queue == 0 || raw.interval.is_zero() {
            return Err(OtlpError(
                "max_queue and interval must be above zero".to_owned(),
            ));
        }
        // Why: `http://collector:4318` (as `OTEL_EXPORTER_OTLP_ENDPOINT` is written) posted
        // every span to `/`, which a collector does not serve: all of them were lost, with a
        // warning a minute. A URL with no path is the collector's base, as the OpenTelemetry
        // SDKs read that variable. Regression: tests::endpoints_are_checked
        if uri.path() == "/" && uri.query().is_none() {
            let mut parts = uri.into_parts();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/traces"));
            return Uri::from_parts(parts)
                .map_err(|_| OtlpError("expected `http(s)://host:port/v1/traces`".to_owned()));
        }
        Ok(uri)
    }

    /// Starts the exporter (the batch processor's thread) for the current runtime; `None`
    /// outside one (`check`, `explain`) or for settings [`Otlp::check`] refuses. The
    /// processor stops, after a last export, once the exporter is dropped (a reload replaced
    /// its snapshot and the requests holding that snapshot are done) or shut down.
    pub fn start(raw: &RawOtlp) -> Option<Arc<Self>> {
        let endpoint = Self::check(raw).ok()?;
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let tls = crate::tls::server::client_config(None, false).ok()?;
        let transport = Transport {
            client: HttpClient::new(&tls),
            runtime,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(transport)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(endpoint.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .build();
        match exporter {
            Ok(exporter) => Some(Arc::new(Self::with_exporter(exporter, raw))),
            Err(e) => {
                // Only the environment can cause this (an `OTEL_EXPORTER_OTLP_COMPRESSION`
                // this build cannot honour): the settings passed `check`.
                tracing::warn!(error = %e, "OTLP exporter not started");
                None
            }
        }
    }

    /// The tracer over `exporter`, batched as `raw` says.
    fn with_exporter(exporter: impl SpanExporter + 'static, raw: &RawOtlp) -> Self {
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = Counted {
            inner: exporter,
            queued: Arc::clone(&queued),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(raw.max_queue)
            .with_max_export_batch_size(MAX_BATCH.min(raw.max_queue))
            .with_scheduled_delay(raw.interval)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            // A span is recorded only for a sampled trace: the gateway has decided already.
            .with_sampler(Sampler::AlwaysOn)
            .with_id_generator(GatewayIds)
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(raw.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = provider.tracer_with_scope(
            InstrumentationScope::builder("portcullis")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        );
        Self {
            tracer,
            provider,
            queued,
            max_queue: raw.max_queue,
        }
    }

    /// Queues a span; never waits (a full queue drops it).
    pub fn record(&self, span: Span) {
        // Why counted here: the processor drops a span a full queue has no room for and
        // only says so at shutdown (to a log this build does not route), so an operator saw
        // traces go missing with nothing on `/metrics`. The same bound, kept in front of the
        // processor, counts each drop, and spares building a span that would be dropped.
        // Regression: tests::a_full_queue_drops_spans_without_waiting
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            SPANS[DROPPED].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let trace_id = TraceId::from_bytes(span.trace_id);
        let parent = match span.parent_id {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                trace_id,
                SpanId::from_bytes(p),
                TraceFlags::SAMPLED,
                true,
                // Why: the client's `tracestate` is a header value; it stays out of spans.
                TraceState::NONE,
            )),
            None => Context::new(),
        };
        let mut attributes = Vec::with_capacity(7);
        attributes.extend([
            KeyValue::new("portcullis.door", span.door),
            KeyValue::new("portcullis.decision", span.decision),
            KeyValue::new("http.response.status_code", i64::from(span.status)),
            KeyValue::new(
                "portcullis.request_id",
                span.request_id.to_str().unwrap_or("-").to_owned(),
            ),
        ]);
        if let Some(m) = &span.method {
            attributes.push(KeyValue::new("http.request.method", m.as_str().to_owned()));
        }
        if let Some(r) = span.reason {
            attributes.push(KeyValue::new("portcullis.reason", r));
        }
        if let Some(r) = span.rule {
            attributes.push(KeyValue::new("portcullis.rule", r));
        }
        if let Some(code) = span.grpc_status {
            attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
        }
        let builder = self
            .tracer
            .span_builder(match &span.method {
                Some(m) => format!("{} {m}", span.door),
                None => span.door.to_owned(),
            })
            .with_kind(SpanKind::Server)
            .with_start_time(unix(span.start_unix_nanos))
            .with_attributes(attributes);
        let mut otel = BUILDING.with(|ids| {
            ids.set(Some((trace_id, SpanId::from_bytes(span.span_id))));
            let built = self.tracer.build_with_context(builder, &parent);
            ids.set(None);
            built
        });
        // An error status for the gateway's own failures; unset otherwise (a denial is the
        // gateway working).
        // Why: a gRPC client's failure is HTTP 200 with its code in `grpc-status`: an
        // upstream timeout (UNAVAILABLE) left the span unmarked, and trace-based alerting
        // missed every gRPC upstream failure. The server-error codes mark it too.
        // Regression: tests::spans_carry_the_gateways_ids_times_and_attributes
        if span.status >= 500 || span.grpc_status.is_some_and(grpc_server_error) {
            otel.set_status(Status::error(span.reason.unwrap_or("error")));
        }
        otel.end_with_timestamp(unix(span.end_unix_nanos));
    }

    /// Exports what is queued and stops the processor, waiting at most [`SHUTDOWN_WAIT`]
    /// (a collector that does not answer is not waited for longer); for a graceful
    /// shutdown, once connections have drained.
    pub async fn shutdown(&self) {
        let provider = self.provider.clone();
        let done = tokio::time::timeout(
            SHUTDOWN_WAIT,
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_WAIT)),
        )
        .await;
        // (The SDK's own wait ends at the same time: its timeout is a failure too.)
        match done {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(
                error = %e,
                queued = self.queued.load(Ordering::Relaxed),
                "OTLP: the last spans were not all exported at shutdown"
            ),
            Ok(Err(_)) | Err(_) => tracing::warn!(
                queued = self.queued.load(Ordering::Relaxed),
                "OTLP: the last spans were not exported within 5 s of shutdown"
            ),
        }
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        // The provider's last handle shuts the processor down and waits for its last export:
        // off the runtime's workers when dropped on one (the last request of an old snapshot).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let provider = self.provider.clone();
            drop(runtime.spawn_blocking(move || provider.shutdown()));
        }
    }
}

fn unix(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
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
            method: None,
            status: 0,
            grpc_status: None,
            decision: "",
            reason: None,
            rule: None,
            request_id: http::HeaderValue::from_static("-"),
            start_unix_nanos: nanos(start),
            end_unix_nanos: nanos(end),
        }
    }
}

/// Whether a gRPC status code in a gateway-made answer is a server's error: UNKNOWN,
/// INTERNAL, UNAVAILABLE, DATA_LOSS. Not DEADLINE_EXCEEDED or UNIMPLEMENTED, which
/// OpenTelemetry's conventions also list: the gateway renders those for the client's own
/// 408 and 405/501, which over HTTP leave the span unset too.
fn grpc_server_error(code: i32) -> bool {
    matches!(code, 2 | 13 | 14 | 15)
}

// === impl GatewayIds ===

impl IdGenerator for GatewayIds {
    fn new_trace_id(&self) -> TraceId {
        BUILDING
            .get()
            .map_or_else(|| RandomIdGenerator::default().new_trace_id(), |ids| ids.0)
    }

    fn new_span_id(&self) -> SpanId {
        BUILDING
            .get()
            .map_or_else(|| RandomIdGenerator::default().new_span_id(), |ids| ids.1)
    }
}

// === impl Counted ===

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len();
        // Out of the queue once handed over, whatever the export's fate.
        self.queued.fetch_sub(n, Ordering::Relaxed);
        let done = self.inner.export(batch).await;
        let n = n as u64;
        match &done {
            Ok(()) => {
                SPANS[EXPORTED].fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                SPANS[FAILED].fetch_add(n, Ordering::Relaxed);
                let now = EPOCH.elapsed().as_secs() + 1;
                let last = LAST_WARNED.load(Ordering::Relaxed);
                if should_warn(last, now)
                    && LAST_WARNED
                        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        spans = n,
                        error = %e,
                        "OTLP export failed; its spans are lost (portcullis_otlp_spans_total{{outcome=\"failed\"}} counts them; next warning in a minute at the earliest)"
                    );
                } else {
                    tracing::debug!(spans = n, error = %e, "OTLP export failed");
                }
            }
        }
        done
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

// === impl Transport ===

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Transport {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<Response<Bytes>, HttpError> {
        let mut request = request.map(Full::new);
        request.headers_mut().insert(
            header::USER_AGENT,
            header::HeaderValue::from_static(concat!("portcullis/", env!("CARGO_PKG_VERSION"))),
        );
        let client = self.client.clone();
        let answer = self
            .runtime
            .spawn(async move { client.send(request, EXPORT_TIMEOUT, MAX_ANSWER).await })
            .await?;
        match answer {
            Ok(fetched) => {
                // `HttpClient::send` answers only 2xx; the exporter asks no more than success.
                let mut resp = Response::new(fetched.body);
                *resp.headers_mut() = fetched.headers;
                Ok(resp)
            }
            Err(FetchError::Status(status)) => {
                tracing::debug!(status = status.as_u16(), "OTLP collector refused a batch");
                Ok(Response::builder().status(status).body(Bytes::new())?)
            }
            Err(e) => {
                tracing::debug!(error = %e, reason = e.as_str(), "OTLP export failed");
                Err(Box::new(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry::Value;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::trace::SpanData;

    use super::*;

    /// An exporter keeping what it is given, once `gate` is free.
    #[derive(Debug, Clone, Default)]
    struct Kept {
        spans: Arc<Mutex<Vec<SpanData>>>,
        gate: Arc<Mutex<()>>,
    }

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            drop(self.gate.lock().unwrap());
            self.spans.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    fn raw(endpoint: &str) -> RawOtlp {
        RawOtlp {
            endpoint: endpoint.into(),
            service_name: "s".into(),
            interval: Duration::from_secs(60),
            max_queue: 10,
        }
    }

    fn attribute<'s>(span: &'s SpanData, key: &str) -> Option<&'s Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn spans_carry_the_gateways_ids_times_and_attributes() {
        let kept = Kept::default();
        let otlp = Otlp::with_exporter(kept.clone(), &raw("http://127.0.0.1:4318/v1/traces"));
        let cx = TraceContext {
            trace_id: [0xab; 16],
            parent_id: Some([1; 8]),
            span_id: [2; 8],
            flags: 1,
            state: None,
        };
        let mut s = Span::ending_now(&cx, Duration::from_millis(3));
        s.door = "proxy";
        s.method = Some(http::Method::GET);
        s.decision = "deny";
        s.reason = Some("missing_credential");
        s.rule = Some("api".into());
        s.status = 401;
        otlp.record(s);
        let mut root = Span::ending_now(
            &TraceContext {
                parent_id: None,
                span_id: [3; 8],
                trace_id: [0xcd; 16],
                ..cx
            },
            Duration::from_millis(1),
        );
        root.status = 502;
        root.reason = Some("upstream_unavailable");
        otlp.record(root);
        // gRPC answers: UNAVAILABLE (an upstream's failure) is an error, UNAUTHENTICATED (a
        // denial) is not; both carry their code.
        for (code, id) in [(14, 4), (16, 5)] {
            let mut g = Span::ending_now(
                &TraceContext {
                    span_id: [id; 8],
                    state: None,
                    ..cx
                },
                Duration::from_millis(1),
            );
            g.status = 200;
            g.grpc_status = Some(code);
            otlp.record(g);
        }
        otlp.provider.force_flush().unwrap();

        let spans = kept.spans.lock().unwrap();
        assert_eq!(spans.len(), 4);
        assert_eq!(attribute(&spans[0], "rpc.grpc.status_code"), None);
        assert_eq!(
            attribute(&spans[2], "rpc.grpc.status_code"),
            Some(&Value::I64(14))
        );
        assert!(matches!(spans[2].status, Status::Error { .. }));
        assert_eq!(
            attribute(&spans[3], "rpc.grpc.status_code"),
            Some(&Value::I64(16))
        );
        assert_eq!(spans[3].status, Status::Unset);
        let s = &spans[0];
        assert_eq!(s.span_context.trace_id(), TraceId::from_bytes([0xab; 16]));
        assert_eq!(s.span_context.span_id(), SpanId::from_bytes([2; 8]));
        assert_eq!(s.parent_span_id, SpanId::from_bytes([1; 8]));
        assert!(s.parent_span_is_remote);
        assert_eq!(s.span_kind, SpanKind::Server);
        assert_eq!(s.name, "proxy GET");
        assert_eq!(
            s.end_time.duration_since(s.start_time).unwrap(),
            Duration::from_millis(3)
        );
        assert_eq!(
            attribute(s, "portcullis.decision"),
            Some(&Value::from("deny"))
        );
        assert_eq!(
            attribute(s, "portcullis.reason"),
            Some(&Value::from("missing_credential"))
        );
        assert_eq!(attribute(s, "portcullis.rule"), Some(&Value::from("api")));
        assert_eq!(
            attribute(s, "http.response.status_code"),
            Some(&Value::I64(401))
        );
        assert_eq!(s.status, Status::Unset);

        let root = &spans[1];
        assert_eq!(
            root.span_context.trace_id(),
            TraceId::from_bytes([0xcd; 16])
        );
        assert_eq!(root.span_context.span_id(), SpanId::from_bytes([3; 8]));
        assert_eq!(root.parent_span_id, SpanId::INVALID);
        assert!(matches!(root.status, Status::Error { .. }));
        // The ids were for those builds only.
        assert!(BUILDING.get().is_none());
    }

    #[test]
    fn a_full_queue_drops_spans_without_waiting() {
        let kept = Kept::default();
        let otlp = Otlp::with_exporter(kept.clone(), &raw("http://127.0.0.1:4318/v1/traces"));
        let cx = TraceContext {
            trace_id: [1; 16],
            parent_id: None,
            span_id: [1; 8],
            flags: 1,
            state: None,
        };
        // A stuck collector: the processor's thread waits in its first export.
        let stuck = kept.gate.lock().unwrap();
        for _ in 0..100 {
            otlp.record(Span::ending_now(&cx, Duration::ZERO));
        }
        drop(stuck);
        otlp.provider.force_flush().unwrap();
        // The queue holds 10: at most the batch taken before the export stuck and a full
        // queue behind it got through; the rest were dropped, and recording went on.
        let n = kept.spans.lock().unwrap().len();
        assert!((10..=20).contains(&n), "{n} exported");
        // Every drop was counted (other tests record too: at least these).
        let dropped = span_counts()[DROPPED].1;
        assert!(dropped >= 100 - n as u64, "{dropped} dropped, {n} exported");
        // The count of queued spans came back down: recording goes on after a stall.
        assert_eq!(otlp.queued.load(Ordering::Relaxed), 0);
        let before = kept.spans.lock().unwrap().len();
        otlp.record(Span::ending_now(&cx, Duration::ZERO));
        otlp.provider.force_flush().unwrap();
        assert_eq!(kept.spans.lock().unwrap().len(), before + 1);
    }

    #[test]
    fn failed_exports_warn_once_a_minute() {
        assert!(should_warn(0, 1));
        assert!(!should_warn(1, 1));
        assert!(!should_warn(1, 60));
        assert!(should_warn(1, 61));
        // The swap happens for the first warning too: the next one waits.
        let last = AtomicU64::new(0);
        let warned = |now: u64| {
            let seen = last.load(Ordering::Relaxed);
            should_warn(seen, now)
                && last
                    .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
        };
        assert!(warned(5));
        assert!(!warned(6));
        assert!(!warned(64));
        assert!(warned(65));
    }

    #[test]
    fn endpoints_are_checked() {
        assert!(Otlp::check(&raw("http://127.0.0.1:4318/v1/traces")).is_ok());
        // A base URL is the collector's: its traces path is added, as the SDKs add it.
        for base in ["http://127.0.0.1:4318", "http://127.0.0.1:4318/"] {
            assert_eq!(
                Otlp::check(&raw(base)).unwrap().to_string(),
                "http://127.0.0.1:4318/v1/traces"
            );
        }
        assert_eq!(
            Otlp::check(&raw("https://otel.example/custom/path"))
                .unwrap()
                .to_string(),
            "https://otel.example/custom/path",
            "a path written is used as written"
        );
        for bad in [
            "127.0.0.1:4318",
            "ftp://x/v1/traces",
            "http://u:p@x/v1/traces",
        ] {
            assert!(Otlp::check(&raw(bad)).is_err(), "{bad}");
        }
    }
}
