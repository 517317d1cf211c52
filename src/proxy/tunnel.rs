//! Upgraded connections (WebSockets): after the decision allowed the upgrade request and the
//! upstream answered `101`, bytes are relayed both ways until either side closes, or the
//! tunnel is closed by one of its bounds:
//!
//! - `idle_timeout`: no byte either way for that long;
//! - `max_lifetime`: that long after it opened;
//! - the credential's expiry (JWT or introspection `exp`), read from the snapshot's clock;
//! - `reauthorize_every`: the request is decided again against the *current* snapshot with a
//!   fresh verification of its credential ([`crate::decision::Recheck`]); a denial, or an
//!   allow by a rule that would refuse the tunnel now (no longer relaying its protocol, or
//!   refusing its origin), closes it. A re-check that cannot decide
//!   (key server or introspection endpoint down, delegate failing closed) keeps the tunnel
//!   until the next one: it is no denial, and the credential's expiry still applies;
//! - the gateway's drain (the connection's task drops the tunnel: see `server::connection`).
//!
//! Closing drops both streams: the client sees the TCP connection end (a WebSocket client
//! reports close code 1006). The relay copies bytes without parsing frames, so no close frame
//! can be written without risking one in the middle of another.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::clock::{Activity, Clock};
use crate::decision::{self, Decision, Recheck};
use crate::request::RequestFacts;
use crate::request::facts::ConnInfo;
use crate::server::Shared;

/// How often a tunnel with nothing else due looks at its idle deadline, at most.
const MAX_CHECK: Duration = Duration::from_secs(5);

/// What a tunnel needs besides its two streams.
pub(super) struct Bounds {
    /// No byte either way for this long closes it.
    pub(super) idle: Duration,
    /// It closes this long after it opened.
    pub(super) lifetime: Duration,
    /// Unix second at which the credential expires.
    pub(super) expires_at: Option<u64>,
    /// Re-decided this often, with what it takes.
    pub(super) recheck: Option<(Duration, Recheckable)>,
}

/// The request as it was decided on, kept to decide it again.
pub(super) struct Recheckable {
    /// For a tunnel, the protocols it was opened for: the rule allowing it must still relay
    /// them, to its origin.
    pub(super) tunnel: Option<http::HeaderValue>,
    pub(super) head: http::request::Parts,
    pub(super) conn: ConnInfo,
    pub(super) shared: Arc<Shared>,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Failed,
    Idle,
    Lifetime,
    Expired,
    Denied,
}

// === impl End ===

impl End {
    fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Failed => "failed",
            Self::Idle => "tunnel_idle_timeout",
            Self::Lifetime => "tunnel_max_lifetime",
            Self::Expired => "tunnel_credential_expired",
            Self::Denied => "tunnel_reauthorization_denied",
        }
    }
}

/// Relays between the client's and the upstream's upgraded streams within `bounds`.
pub(super) async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    bounds: Bounds,
    clock: Clock,
    shared: Arc<Shared>,
    request_id: http::HeaderValue,
) {
    let started = Instant::now();
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (c, _) => {
            let side = if c.is_err() { "client" } else { "upstream" };
            tracing::debug!(side, request_id = ?request_id, "Upgrade did not complete");
            return;
        }
    };
    let moved = Arc::new(Activity::since(started));
    let mut client = Counted::new(client, Arc::clone(&moved));
    let mut upstream = Counted::new(upstream, Arc::clone(&moved));
    let relay = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(relay);
    let watch = watchdog(&bounds, &clock, &moved, started);
    tokio::pin!(watch);
    let end = tokio::select! {
        r = &mut relay => if r.is_ok() { End::Closed } else { End::Failed },
        end = &mut watch => end,
    };
    if !matches!(end, End::Closed | End::Failed) {
        shared.metrics.limit(end.as_str());
    }
    tracing::debug!(
        reason = end.as_str(),
        request_id = request_id.to_str().unwrap_or("-"),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "Tunnel ended"
    );
}

/// Resolves, with the metric name of the reason, when the credential of a long response
/// expires or a re-check denies its request (`watched`): the tunnel's watch without its
/// byte-level bounds.
pub(super) async fn credential_watch(
    mut expires_at: Option<u64>,
    rechecks: Option<(Duration, Recheckable)>,
    clock: Clock,
) -> &'static str {
    let mut next_recheck = rechecks.as_ref().map(|(every, _)| Instant::now() + *every);
    loop {
        let now = Instant::now();
        let clock_now = clock.unix_secs();
        if expires_at.is_some_and(|exp| clock_now >= exp) {
            return "stream_credential_expired";
        }
        if let (Some(at), Some((every, r))) = (next_recheck, &rechecks)
            && now >= at
        {
            match recheck(r).await {
                Verdict::Keep(exp) => {
                    if exp.is_some() {
                        expires_at = exp;
                    }
                }
                Verdict::Close => return "stream_reauthorization_denied",
                Verdict::Unknown => {}
            }
            next_recheck = Some(Instant::now() + *every);
            continue;
        }
        let mut wake = now + MAX_CHECK;
        if let Some(exp) = expires_at {
            wake = wake.min(now + Duration::from_secs(exp.saturating_sub(clock_now)));
            if clock.is_manual() {
                wake = wake.min(now + Duration::from_millis(100));
            }
        }
        if let Some(at) = next_recheck {
            wake = wake.min(at);
        }
        tokio::time::sleep_until(wake.max(now + Duration::from_millis(10))).await;
    }
}

/// Resolves when a bound closes the tunnel.
async fn watchdog(bounds: &Bounds, clock: &Clock, moved: &Activity, started: Instant) -> End {
    let lifetime_end = started + bounds.lifetime;
    let mut expires_at = bounds.expires_at;
    let mut next_recheck = bounds.recheck.as_ref().map(|(every, _)| started + *every);
    loop {
        let now = Instant::now();
        let clock_now = clock.unix_secs();
        if expires_at.is_some_and(|exp| clock_now >= exp) {
            return End::Expired;
        }
        if now >= lifetime_end {
            return End::Lifetime;
        }
        // Why: the idle deadline counts from the last byte that moved, not from the watchdog's
        // last look: a look that only saw that bytes had moved restarted the count then, so a
        // tunnel quiet for up to twice `idle_timeout` stayed open.
        // Regression: tests (it) edge::websocket_idle_timeout_counts_from_the_last_frame
        let quiet_since = moved.last();
        if now.duration_since(quiet_since) >= bounds.idle {
            return End::Idle;
        }
        if let (Some(at), Some((every, r))) = (next_recheck, &bounds.recheck)
            && now >= at
        {
            match recheck(r).await {
                Verdict::Keep(exp) => {
                    if exp.is_some() {
                        expires_at = exp;
                    }
                }
                Verdict::Close => return End::Denied,
                Verdict::Unknown => {}
            }
            next_recheck = Some(Instant::now() + *every);
            continue;
        }
        // The next thing due: the idle deadline (checked again then, as bytes may have
        // moved), the lifetime, the expiry, the re-check.
        let mut wake = (quiet_since + bounds.idle)
            .min(lifetime_end)
            .min(now + MAX_CHECK);
        if let Some(exp) = expires_at {
            wake = wake.min(now + Duration::from_secs(exp.saturating_sub(clock_now)));
            // A manual clock (tests) does not move with real time: look at it often.
            if clock.is_manual() {
                wake = wake.min(now + Duration::from_millis(100));
            }
        }
        if let Some(at) = next_recheck {
            wake = wake.min(at);
        }
        tokio::time::sleep_until(wake.max(now + Duration::from_millis(10))).await;
    }
}

/// What a re-check says.
enum Verdict {
    /// Still allowed (with the credential's new expiry, if it has one).
    Keep(Option<u64>),
    /// Denied, or allowed by a rule that relays no upgrade: close.
    Close,
    /// No answer (keys, introspection or delegate unavailable): keep until the next check.
    Unknown,
}

/// Decides the tunnel's request again, against the current snapshot.
async fn recheck(r: &Recheckable) -> Verdict {
    let snapshot = r.shared.current.load_full();
    let Ok(facts) = RequestFacts::from_parts(&r.head, &r.conn, &snapshot.server.trusted_proxies)
    else {
        return Verdict::Close;
    };
    match decision::decide(&snapshot, &facts, &mut Recheck).await {
        Decision::Allow(a) => {
            // Why: the re-check asked only whether the rule relayed some upgrade, so a tunnel
            // the current rules refuse (its protocol no longer relayed, its origin no longer
            // named by the rule's `cors`) stayed open.
            // Regression: tests (it) edge::a_recheck_closes_a_websocket_the_current_rule_would_refuse
            if let Some(protocols) = &r.tunnel {
                let edge = a.edge.as_deref();
                if !edge.is_some_and(|e| e.relays(protocols.as_bytes())) {
                    tracing::info!(rule = %a.rule.0, "Tunnel closed: the rule allowing it now relays no such upgrade");
                    return Verdict::Close;
                }
                if edge.is_some_and(|e| e.refuses_upgrade_origin(&r.head.headers)) {
                    tracing::info!(rule = %a.rule.0, "Tunnel closed: the rule allowing it now refuses its origin");
                    return Verdict::Close;
                }
            }
            Verdict::Keep(super::service::live_expiry(&a, &snapshot.clock))
        }
        Decision::Deny(d) => {
            use crate::decision::DenyKind;
            match d.kind {
                DenyKind::AuthnUnavailable | DenyKind::DelegateUnavailable => {
                    tracing::warn!(
                        reason = d.kind.as_str(),
                        "Tunnel re-check could not decide; kept until the next one"
                    );
                    Verdict::Unknown
                }
                kind => {
                    // A tunnel's or a long response's (`proxy::watched`).
                    let closed = if r.tunnel.is_some() {
                        "tunnel"
                    } else {
                        "response"
                    };
                    tracing::info!(
                        reason = kind.as_str(),
                        rule = d.rule.as_ref().map_or("-", |r| &*r.0),
                        closed,
                        "Closed: its request is denied now"
                    );
                    Verdict::Close
                }
            }
        }
    }
}

/// An upgraded stream that records when its reads and writes move bytes.
struct Counted {
    io: TokioIo<Upgraded>,
    moved: Arc<Activity>,
}

impl Counted {
    fn new(io: Upgraded, moved: Arc<Activity>) -> Self {
        Self {
            io: TokioIo::new(io),
            moved,
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.moved.touch();
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.touch();
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
