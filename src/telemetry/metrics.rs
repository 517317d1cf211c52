//! Prometheus metrics with typed handles.
//!
//! Every handle touched per request is created up front and updated with atomics only: no lock
//! and no label hashing on the hot path. Labels are low-cardinality (door, decision, status,
//! reason), never a principal or an address.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::snapshot::Snapshot;
use crate::upstream::EndpointStatus;
use std::time::Duration;

use crate::request::facts::Door;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// Status codes given their own label value; the last slot, `other`, counts the rest.
const STATUSES: &[(u16, &str)] = &[
    (200, "200"),
    (201, "201"),
    (202, "202"),
    (204, "204"),
    (206, "206"),
    (301, "301"),
    (302, "302"),
    (303, "303"),
    (304, "304"),
    (307, "307"),
    (308, "308"),
    (400, "400"),
    (401, "401"),
    (403, "403"),
    (404, "404"),
    (405, "405"),
    (408, "408"),
    (409, "409"),
    (411, "411"),
    (413, "413"),
    (414, "414"),
    (415, "415"),
    (417, "417"),
    (421, "421"),
    (422, "422"),
    (429, "429"),
    (431, "431"),
    (500, "500"),
    (501, "501"),
    (502, "502"),
    (503, "503"),
    (504, "504"),
    (505, "505"),
    (0, "other"),
];

/// Outcome of a request at a door, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The decision allowed it.
    Allow = 0,
    /// The decision denied it.
    Deny = 1,
    /// It never reached a decision (bad request) or failed after one (upstream error).
    Error = 2,
}
const OUTCOMES: [&str; 3] = ["allow", "deny", "error"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    door: &'static str,
    decision: &'static str,
    status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DoorLabel {
    door: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DenialLabels {
    door: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DoorKindLabels {
    door: &'static str,
    kind: &'static str,
}

/// A configured name as a label value, shared with the config rather than copied, and
/// escaped as it is written ([`label_text`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Name(Arc<str>);

impl prometheus_client::encoding::EncodeLabelValue for Name {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        prometheus_client::encoding::EncodeLabelValue::encode(&&*label_text(&self.0), encoder)
    }
}

/// A configured name (an upstream's, a limit's) as the text format writes a label value: `\`,
/// `"` and line feeds escaped.
///
/// Why: prometheus-client writes label values as they are, and a name the config takes
/// (`upstreams: {"a\"b": …}`) broke the whole `/metrics` page for every scraper.
/// Regression: tests::configured_names_are_escaped_in_labels
fn label_text(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamKindLabels {
    upstream: Name,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// All metrics of one gateway process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `[door][outcome][status slot]`.
    requests: Vec<Vec<Vec<Counter>>>,
    /// `[door]`.
    duration: Vec<Histogram>,
    reloads: Family<OutcomeLabel, Counter>,
    config_version: Family<VersionLabel, Gauge>,
    upstream_errors: Family<UpstreamKindLabels, Counter>,
    bad_requests: Family<DoorKindLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    limits: Family<LimitLabel, Counter>,
    /// Client connections open now.
    pub connections_open: Gauge,
    /// Client connections accepted.
    pub connections_total: Counter,
    /// Idle HTTP/1.1 client connections holding no HTTP buffers now.
    pub connections_parked: Gauge,
    /// TLS handshakes that failed or timed out, by reason.
    tls_handshake_errors: Family<ReasonLabel, Counter>,
    /// Identity header values left out for forbidden characters, `[door]`.
    identity_headers_refused: Vec<Counter>,
    /// The snapshot whose rate limits and Redis store are read at each scrape.
    snapshot: SnapshotSource,
    /// Tells this instance's counters apart in the per-thread cache ([`cached`]).
    id: u64,
}

/// Which labelled family a [`cached`] counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Labelled {
    Denial(Door),
    BadRequest(Option<Door>),
    Limit,
}

/// Cache key: the [`Metrics`] instance, the family, and the label's address and length (the
/// labels are `&'static str`s from closed sets; two copies of one text are two keys for the
/// same counter).
type CacheKey = (u64, Labelled, usize, usize);

thread_local! {
    static COUNTERS: std::cell::RefCell<std::collections::HashMap<CacheKey, Counter>> =
        std::cell::RefCell::default();
}

/// Increments the counter of a labelled family without taking the family's lock, after the
/// first time on each thread: `Family::get_or_create` takes a read lock and hashes the labels
/// on every call, and a flood of denials calls it on every request.
fn cached(metrics: u64, family: Labelled, label: &'static str, get: impl FnOnce() -> Counter) {
    let key = (metrics, family, label.as_ptr() as usize, label.len());
    COUNTERS.with(|c| {
        let mut c = c.borrow_mut();
        match c.get(&key) {
            Some(counter) => {
                counter.inc();
            }
            None => {
                let counter = get();
                counter.inc();
                c.insert(key, counter);
            }
        }
    });
}

/// Ids of [`Metrics`] instances (several live in one test process).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Where the rate-limit collector finds the active snapshot (set once the reloader exists).
#[derive(Debug, Default, Clone)]
struct SnapshotSource(Arc<OnceLock<Arc<ArcSwap<Snapshot>>>>);

/// Rate-limit and Redis metrics, read from the limits of the active snapshot at each scrape:
/// their counters are atomics the decision core updates, carried across reloads by name.
#[derive(Debug)]
struct SnapshotCollector(SnapshotSource);

/// A latency histogram updated with atomics only (prometheus-client's own takes a lock per
/// observation).
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

/// Request latency buckets, in seconds.
const LATENCY_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

// === impl Metrics ===

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        let requests_family = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by door, decision and status",
            requests_family.clone(),
        );
        let requests = Door::ALL
            .iter()
            .map(|door| {
                OUTCOMES
                    .iter()
                    .map(|decision| {
                        STATUSES
                            .iter()
                            .map(|(_, status)| {
                                requests_family
                                    .get_or_create(&RequestLabels {
                                        door: door.as_str(),
                                        decision,
                                        status,
                                    })
                                    .clone()
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let duration_family = Family::<DoorLabel, Histogram, _>::new_with_constructor(|| {
            Histogram::new(LATENCY_BOUNDS)
        });
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head, by door",
            duration_family.clone(),
        );
        // Created once and kept: observing takes no lock.
        let duration = Door::ALL
            .iter()
            .map(|door| {
                duration_family
                    .get_or_create(&DoorLabel {
                        door: door.as_str(),
                    })
                    .clone()
            })
            .collect();
        let reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads by outcome (applied, unchanged, failed)",
            reloads.clone(),
        );
        let config_version = Family::<VersionLabel, Gauge>::default();
        registry.register(
            "config_info",
            "The active config version (value 1)",
            config_version.clone(),
        );
        let upstream_errors = Family::<UpstreamKindLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges by upstream and kind: the reason code the client got (upstream_timeout, upstream_connect_timeout, upstream_unavailable, upstream_tls, upstream_invalid_response, …), or idle_timeout and response_body for a response cut after its head",
            upstream_errors.clone(),
        );
        let bad_requests = Family::<DoorKindLabels, Counter>::default();
        registry.register(
            "bad_requests",
            "Requests rejected before a decision, by door (or admin) and reason",
            bad_requests.clone(),
        );
        let denials = Family::<DenialLabels, Counter>::default();
        registry.register(
            "denials",
            "Denied requests by door and reason code (a closed set)",
            denials.clone(),
        );
        let limits = Family::<LimitLabel, Counter>::default();
        registry.register(
            "connection_limits",
            "Client connections or streams ended by a limit or deadline: http2_resets, http2_control_frames, http2_library (h2's own GOAWAY ENHANCE_YOUR_CALM), send_timeout, idle_timeout, header_read_timeout, body_timeout, stalled, drain, door_strangers; tunnels closed: tunnel_idle_timeout, tunnel_max_lifetime, tunnel_credential_expired, tunnel_reauthorization_denied, tunnel_drained; streams cut: stream_credential_expired, stream_reauthorization_denied; requests shed: max_in_flight, uploads_per_client, uploads",
            limits.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now",
            connections_open.clone(),
        );
        let connections_parked = Gauge::default();
        registry.register(
            "connections_parked",
            "Idle HTTP/1.1 client connections holding only their socket (and TLS session) now",
            connections_parked.clone(),
        );
        let connections_total = Counter::default();
        registry.register(
            "connections",
            "Client connections accepted",
            connections_total.clone(),
        );
        let tls_handshake_errors = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes that failed or timed out, by reason: timeout, io, client_cert_missing, client_cert_expired, client_cert_unknown_ca, client_cert_revoked, client_cert_invalid, peer_alert (the client refused the gateway's certificate or gave up), no_common_protocol, protocol",
            tls_handshake_errors.clone(),
        );
        let refused_family = Family::<DoorLabel, Counter>::default();
        registry.register(
            "identity_headers_refused",
            "Identity header values left out, by door: CR, LF or non-visible characters, or a list element that is empty, has whitespace at its ends or holds the separator",
            refused_family.clone(),
        );
        let identity_headers_refused = Door::ALL
            .iter()
            .map(|door| {
                refused_family
                    .get_or_create(&DoorLabel {
                        door: door.as_str(),
                    })
                    .clone()
            })
            .collect();
        let snapshot = SnapshotSource::default();
        registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
        Self {
            snapshot,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            duration,
            reloads,
            config_version,
            upstream_errors,
            bad_requests,
            denials,
            limits,
            connections_open,
            connections_total,
            connections_parked,
            tls_handshake_errors,
            identity_headers_refused,
        }
    }

    /// Counts one answered request at `door`.
    pub fn request(&self, door: Door, outcome: Outcome, status: u16, elapsed: Duration) {
        let slot = status_slot(status);
        if let Some(c) = self
            .requests
            .get(door.index())
            .and_then(|d| d.get(outcome as usize))
            .and_then(|row| row.get(slot))
        {
            c.inc();
        }
        if let Some(h) = self.duration.get(door.index()) {
            h.observe(elapsed);
        }
    }

    /// Counts identity header values left out of an allowed request's headers at `door`.
    pub fn identity_headers_refused(&self, door: Door, values: u32) {
        if let Some(c) = self.identity_headers_refused.get(door.index()) {
            c.inc_by(u64::from(values));
        }
    }

    /// Counts a reload outcome (`applied`, `unchanged`, `failed`).
    pub fn reload(&self, outcome: &'static str) {
        self.reloads.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Sets the active config version.
    pub fn set_config_version(&self, version: &str) {
        self.config_version.clear();
        self.config_version
            .get_or_create(&VersionLabel {
                version: version.to_owned(),
            })
            .set(1);
    }

    /// Counts a failed TLS handshake (`reason`: one of the fixed set in the metric's help).
    pub fn tls_handshake_error(&self, reason: &'static str) {
        self.tls_handshake_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts a failed exchange with the upstream named `upstream`.
    ///
    /// Why the upstream: with several upstreams, the count did not say which one failed, as
    /// Envoy's per-cluster `upstream_rq_timeout` and `upstream_cx_connect_fail` do. (A
    /// failure's path: the family's lookup is not cached per thread as the hot counters'.)
    /// Regression: tests::cached_labelled_counters_count_per_instance_from_every_thread, tests
    /// (it) upstreams::stalled_response_body_cut_at_the_idle_timeout
    pub fn upstream_error(&self, upstream: &Arc<str>, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamKindLabels {
                upstream: Name(Arc::clone(upstream)),
                kind,
            })
            .inc();
    }

    /// Counts a request rejected before a decision, at `door` (`None`: the admin listener).
    pub fn bad_request(&self, door: Option<Door>, kind: &'static str) {
        cached(self.id, Labelled::BadRequest(door), kind, || {
            self.bad_requests
                .get_or_create(&DoorKindLabels {
                    door: door.map_or("admin", Door::as_str),
                    kind,
                })
                .clone()
        });
    }

    /// Counts a denial at `door` by its reason code.
    pub fn denial(&self, door: Door, reason: &'static str) {
        cached(self.id, Labelled::Denial(door), reason, || {
            self.denials
                .get_or_create(&DenialLabels {
                    door: door.as_str(),
                    reason,
                })
                .clone()
        });
    }

    /// Counts a connection or stream ended by a resource limit (a closed set of names).
    pub fn limit(&self, limit: &'static str) {
        cached(self.id, Labelled::Limit, limit, || {
            self.limits.get_or_create(&LimitLabel { limit }).clone()
        });
    }

    /// Reads rate-limit and Redis metrics from `current` at each scrape (set once).
    pub fn watch(&self, current: &Arc<ArcSwap<Snapshot>>) {
        let _ = self.snapshot.0.set(Arc::clone(current));
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// === impl SnapshotCollector ===

/// One per-endpoint metric family: name, help, type and how to read it.
type EndpointFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&EndpointStatus) -> u64,
);

/// The upstreams' endpoints and retries, read at scrape time from the active snapshot.
fn encode_upstreams(
    snapshot: &Snapshot,
    encoder: &mut DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    if snapshot.upstreams.is_empty() {
        return Ok(());
    }
    let endpoints: Vec<_> = snapshot
        .upstreams
        .iter()
        .map(|u| (u, u.endpoint_status()))
        .collect();
    let per_endpoint: [EndpointFamily; 4] = [
        (
            "upstream_endpoint_up",
            "Whether an upstream endpoint is in rotation now (1): passing its health checks and not ejected",
            MetricType::Gauge,
            |ep| u64::from(ep.healthy && !ep.ejected),
        ),
        (
            "upstream_endpoint_healthy",
            "Whether an upstream endpoint passes its active health checks (1; always 1 without checks)",
            MetricType::Gauge,
            |ep| u64::from(ep.healthy),
        ),
        (
            "upstream_endpoint_ejections",
            "Times an upstream endpoint was ejected after consecutive failures",
            MetricType::Counter,
            |ep| ep.ejections,
        ),
        (
            "upstream_endpoint_in_flight",
            "Requests in flight to an upstream endpoint (counted for balance: least_request)",
            MetricType::Gauge,
            |ep| u64::from(ep.in_flight),
        ),
    ];
    for (name, help, kind, value) in per_endpoint {
        let mut m = encoder.encode_descriptor(name, help, None, kind)?;
        for (u, eps) in &endpoints {
            for ep in eps {
                let labels = [
                    ("upstream", &*label_text(&u.name)),
                    ("endpoint", &*label_text(ep.address.as_str())),
                ];
                let mut e = m.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => {
                        e.encode_counter::<NoLabelSet, _, u64>(&value(ep), None)?;
                    }
                    _ => e.encode_gauge(&i64::try_from(value(ep)).unwrap_or(i64::MAX))?,
                }
            }
        }
    }
    let mut m = encoder.encode_descriptor(
        "upstream_retries",
        "Upstream requests retried, by outcome (sent, or refused by the retry budget)",
        None,
        MetricType::Counter,
    )?;
    for u in &snapshot.upstreams {
        let (sent, refused) = u.retries();
        for (outcome, v) in [("sent", sent), ("budget_refused", refused)] {
            let labels = [("upstream", &*label_text(&u.name)), ("outcome", outcome)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(current) = self.0.0.get() else {
            return Ok(());
        };
        let snapshot = current.load_full();
        let spans = crate::telemetry::otlp::span_counts();
        if snapshot.otlp.is_some() || spans.iter().any(|(_, n)| *n > 0) {
            let mut m = encoder.encode_descriptor(
                "otlp_spans",
                "Spans for the OTLP collector by outcome: exported, failed (the collector refused or never got their batch), dropped (the queue, tracing.otlp.max_queue, was full)",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in spans {
                m.encode_family(&[("outcome", outcome)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        let limits: Vec<_> = snapshot.rate_limits.iter().collect();
        if !limits.is_empty() {
            let mut m = encoder.encode_descriptor(
                "ratelimit",
                "Requests checked against a rate limit, by limit, door and outcome (allowed, limited, shadow_limited; for a guard, allowed counts the refusals recorded)",
                None,
                MetricType::Counter,
            )?;
            // A door's series are there when the config has a listener of it, or it counted
            // (from zero, so a rate over them starts at the first request).
            let served: Vec<Door> = snapshot.listeners.iter().map(|l| l.door.door()).collect();
            for l in &limits {
                let c = &l.counters;
                for door in Door::ALL {
                    let i = door.index();
                    let counts = [
                        ("allowed", c.allowed[i].load(Ordering::Relaxed)),
                        ("limited", c.limited[i].load(Ordering::Relaxed)),
                        (
                            "shadow_limited",
                            c.shadow_limited[i].load(Ordering::Relaxed),
                        ),
                    ];
                    if !served.contains(&door) && counts.iter().all(|(_, n)| *n == 0) {
                        continue;
                    }
                    for (outcome, n) in counts {
                        let labels = [
                            ("limit", &*label_text(&l.name)),
                            ("door", door.as_str()),
                            ("outcome", outcome),
                        ];
                        m.encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
                    }
                }
            }
            let mut m = encoder.encode_descriptor(
                "ratelimit_redis_fallback",
                "Checks of a redis limit that Redis could not answer, by limit and what on_redis_failure did (allow, deny, local)",
                None,
                MetricType::Counter,
            )?;
            for l in limits.iter().filter(|l| l.is_redis()) {
                for (mode, v) in ["allow", "deny", "local"].iter().zip(&l.counters.fallback) {
                    let labels = [("limit", &*label_text(&l.name)), ("mode", *mode)];
                    m.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, u64>(&v.load(Ordering::Relaxed), None)?;
                }
            }
            let mut m = encoder.encode_descriptor(
                "ratelimit_keys",
                "Keys with budgets held in this process, by limit",
                None,
                MetricType::Gauge,
            )?;
            for l in &limits {
                let labels = [("limit", &*label_text(&l.name))];
                m.encode_family(&labels)?
                    .encode_gauge(&i64::try_from(l.keys()).unwrap_or(i64::MAX))?;
            }
        }
        encode_upstreams(&snapshot, &mut encoder)?;
        // Why: a certificate that expires ends every handshake; operators alert on this
        // (cert-manager, Prometheus `... - time() < 14 * 86400`) rather than learn it from
        // the clients. Regression: tests (it) tls::certificate_expiry_is_a_metric
        let expiring: Vec<_> = snapshot
            .listeners
            .iter()
            .filter_map(|l| Some((&l.name, l.tls.as_ref()?.expiries())))
            .collect();
        if !expiring.is_empty() {
            let mut m = encoder.encode_descriptor(
                "tls_certificate_expiry_timestamp_seconds",
                "When each listener certificate served now expires (notAfter, Unix seconds), by listener and certificate entry (its place in tls.certificates, from 0)",
                None,
                MetricType::Gauge,
            )?;
            for (listener, expiries) in expiring {
                for (entry, at) in expiries.iter().enumerate() {
                    let entry = entry.to_string();
                    let labels = [
                        ("listener", &*label_text(listener)),
                        ("entry", entry.as_str()),
                    ];
                    m.encode_family(&labels)?.encode_gauge(at)?;
                }
            }
        }
        let Some(redis) = &snapshot.redis else {
            return Ok(());
        };
        let r = &redis.metrics;
        let mut m = encoder.encode_descriptor(
            "redis_calls",
            "Rate-limit calls made to Redis",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&r.calls.load(Ordering::Relaxed), None)?;
        let mut m = encoder.encode_descriptor(
            "redis_errors",
            "Rate-limit checks Redis did not answer, by kind (error, timeout, breaker_open: not asked)",
            None,
            MetricType::Counter,
        )?;
        for (kind, v) in [
            ("error", &r.errors),
            ("timeout", &r.timeouts),
            ("breaker_open", &r.short_circuited),
        ] {
            m.encode_family(&[("kind", kind)])?
                .encode_counter::<NoLabelSet, _, u64>(&v.load(Ordering::Relaxed), None)?;
        }
        let m = encoder.encode_descriptor(
            "redis_call_duration_seconds",
            "Latency of the Redis calls that answered",
            None,
            MetricType::Histogram,
        )?;
        r.latency.encode(m)?;
        let mut m = encoder.encode_descriptor(
            "redis_breaker_state",
            "The Redis circuit breaker: 0 closed, 1 open (no calls), 2 half-open (one probe)",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(redis.breaker_state() as i64))?;
        Ok(())
    }
}

fn status_slot(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|(code, _)| *code == status)
        .unwrap_or(STATUSES.len() - 1)
}

// === impl Histogram ===

impl Histogram {
    /// A histogram with the given upper bounds (seconds), plus `+Inf`.
    pub fn new(bounds: &'static [f64]) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(HistogramInner {
            bounds,
            counts,
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.0.bounds.partition_point(|b| *b < secs);
        if let Some(c) = self.0.counts.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let inner = &self.0;
        let buckets: Vec<(f64, u64)> = inner
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let sum = inner.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let count = inner.count.load(Ordering::Relaxed);
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counts_and_histogram_are_exposed() {
        let m = Metrics::new();
        m.request(Door::Proxy, Outcome::Allow, 200, Duration::from_micros(300));
        m.request(Door::Proxy, Outcome::Deny, 403, Duration::from_millis(2));
        m.request(Door::Proxy, Outcome::Error, 599, Duration::from_millis(2));
        m.reload("applied");
        m.set_config_version("abc");
        let text = m.encode();
        assert!(text.contains(
            r#"portcullis_requests_total{door="proxy",decision="allow",status="200"} 1"#
        ));
        assert!(
            text.contains(
                r#"portcullis_requests_total{door="proxy",decision="deny",status="403"} 1"#
            )
        );
        assert!(text.contains(
            r#"portcullis_requests_total{door="proxy",decision="error",status="other"} 1"#
        ));
        assert!(text.contains(r#"portcullis_request_duration_seconds_count{door="proxy"} 3"#));
        assert!(
            text.contains(
                r#"portcullis_request_duration_seconds_bucket{le="0.0005",door="proxy"} 1"#
            )
        );
        assert_eq!(
            text.matches("# TYPE portcullis_request_duration_seconds ")
                .count(),
            1,
            "one family, one TYPE line"
        );
        assert!(text.contains(r#"portcullis_config_reloads_total{outcome="applied"} 1"#));
        assert!(text.contains(r#"portcullis_config_info{version="abc"} 1"#));
    }

    /// Names from the config (an upstream's, a listener's) are written as label values with
    /// `\\`, `"` and line feeds escaped.
    #[test]
    fn configured_names_are_escaped_in_labels() {
        for (name, written) in [
            ("api", "api"),
            ("a\"b", "a\\\"b"),
            ("a\\b", "a\\\\b"),
            ("a\nb", "a\\nb"),
            ("\"\\\n", "\\\"\\\\\\n"),
        ] {
            assert_eq!(label_text(name), written, "{name:?}");
        }
        let m = Metrics::new();
        m.upstream_error(&Arc::from("a\"b\\c\nd"), "connect");
        let text = m.encode();
        let line = r#"portcullis_upstream_errors_total{upstream="a\"b\\c\nd",kind="connect"} 1"#;
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
    }

    /// Labelled counters are found in a per-thread cache after their first use: each
    /// instance keeps its own counts, from every thread, and the text shows each once.
    #[test]
    fn cached_labelled_counters_count_per_instance_from_every_thread() {
        let (a, b) = (Arc::new(Metrics::new()), Metrics::new());
        for _ in 0..3 {
            a.denial(Door::Proxy, "forbidden");
        }
        b.denial(Door::Proxy, "forbidden");
        b.denial(Door::ForwardAuth, "forbidden");
        let other = Arc::clone(&a);
        std::thread::spawn(move || {
            other.denial(Door::Proxy, "forbidden");
            other.bad_request(Some(Door::Proxy), "h2c_upgrade");
            other.limit("idle_timeout");
            other.upstream_error(&Arc::from("api"), "connect");
        })
        .join()
        .unwrap();
        a.bad_request(Some(Door::Proxy), "h2c_upgrade");
        a.bad_request(None, "h2c_upgrade");
        a.upstream_error(&Arc::from("billing"), "connect");
        a.upstream_error(&Arc::from("billing"), "connect");
        let text = a.encode();
        for line in [
            r#"portcullis_denials_total{door="proxy",reason="forbidden"} 4"#,
            r#"portcullis_bad_requests_total{door="proxy",kind="h2c_upgrade"} 2"#,
            r#"portcullis_bad_requests_total{door="admin",kind="h2c_upgrade"} 1"#,
            r#"portcullis_connection_limits_total{limit="idle_timeout"} 1"#,
            r#"portcullis_upstream_errors_total{upstream="api",kind="connect"} 1"#,
            r#"portcullis_upstream_errors_total{upstream="billing",kind="connect"} 2"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text.contains(r#"portcullis_denials_total{door="forward-auth""#),
            "{text}"
        );
        let text = b.encode();
        assert!(text.contains(r#"portcullis_denials_total{door="proxy",reason="forbidden"} 1"#));
        assert!(
            text.contains(r#"portcullis_denials_total{door="forward-auth",reason="forbidden"} 1"#)
        );
    }
}
