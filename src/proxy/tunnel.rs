//! Upgraded connections (WebSockets): after the decision allowed the upgrade request and the
//! upstream answered `101`, bytes are relayed both ways until either side closes (the other
//! then has `HALF_CLOSED_GRACE` to finish), or the tunnel is closed by one of its bounds:
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
//! - the gateway's drain, which the tunnel watches itself (`server::connection` only runs it).
//!
//! A WebSocket tunnel the gateway closes ends with a close frame to each side, as a server
//! going away would: 1008 (policy violation) when its credential expired or a re-check denied
//! it, 1001 (going away) at its idle timeout, its lifetime or the drain, with the reason code
//! as the close reason (`tunnel_credential_expired`, …), so a client can tell an expired
//! token from a broken network, refresh it and reconnect. The relay follows the frames
//! written each way ([`super::wsframe`]); when it closes, each side takes bytes only up to the
//! end of the frame it is in (and at most `FINISH_ALLOWANCE` of them: a frame's length is the
//! peer's to choose), then gets its close frame (masked to the upstream, as from a
//! client), then the TCP connection's end after the other's close (or `CLOSE_GRACE`). A side
//! still inside a frame after `CLOSE_GRACE` is cut without one (1006), as are tunnels of
//! other protocols, whose framing the gateway does not know.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::wsframe::{self, Frames};
use crate::clock::{Activity, Clock};
use crate::decision::{self, Decision, Recheck};
use crate::request::RequestFacts;
use crate::request::facts::ConnInfo;
use crate::server::Shared;

/// How often a tunnel with nothing else due looks at its idle deadline, at most.
const MAX_CHECK: Duration = Duration::from_secs(5);

/// How long a WebSocket tunnel the gateway closes waits for each side to reach the end of the
/// frame it is in, and then for the close handshake, before it drops both connections.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a tunnel one side has ended (its end of the TCP connection closed) stays open
/// with no byte moving for the other to finish: the close the gateway passes on is answered
/// in that time, or the tunnel is dropped.
const HALF_CLOSED_GRACE: Duration = Duration::from_secs(5);

/// How many bytes a side of a WebSocket tunnel the gateway closes may still take to finish
/// the frame it is in; past them it is cut without a close frame.
const FINISH_ALLOWANCE: usize = 64 * 1024;

/// Where a side of a closing WebSocket tunnel is (`Relay::sides`).
const AT_BOUNDARY: u8 = 0;
const MID_FRAME: u8 = 1;
const GIVEN_UP: u8 = 2;

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
    /// A declined upgrade's answer (an ordinary response): the longest pause in its body, as
    /// any response's (the rule's or upstream's `idle_timeout`).
    pub(super) answer_idle: Duration,
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
    Drained,
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
            Self::Drained => "tunnel_drained",
        }
    }

    /// The WebSocket close code a tunnel the gateway closes for this reason ends with.
    fn close_code(self) -> Option<u16> {
        match self {
            Self::Closed | Self::Failed => None,
            // Policy violation: the client may no longer use the tunnel.
            Self::Expired | Self::Denied => Some(1008),
            // Going away: the gateway ends it, for no fault of the client's credential.
            Self::Idle | Self::Lifetime | Self::Drained => Some(1001),
        }
    }
}

/// What the relay's two sides share with the tunnel's watch.
struct Relay {
    moved: Activity,
    /// Set when the gateway closes a WebSocket tunnel: each side then takes bytes only up to
    /// the end of the frame it is in.
    closing: AtomicBool,
    /// For each side (`TO_CLIENT`, `TO_UPSTREAM`), whether what it was written so far ends
    /// between frames (`AT_BOUNDARY`), inside one (`MID_FRAME`), or inside one it may no
    /// longer finish (`GIVEN_UP`: closing, its allowance spent).
    sides: [AtomicU8; 2],
    /// Woken (once by each side) when a closing side is done: at the end of its frame, or
    /// given up.
    settled: Notify,
    /// Woken when either side's stream has ended (read its end of file).
    ended: Notify,
}

/// The side the client reads, and the side the upstream reads.
const TO_CLIENT: usize = 0;
const TO_UPSTREAM: usize = 1;

/// Relays between the client's and the upstream's upgraded streams within `bounds`, until
/// either side closes, a bound closes it, or the gateway drains. A `websocket` tunnel the
/// gateway closes ends with close frames.
pub(super) async fn run(
    client: OnUpgrade,
    upstream: OnUpgrade,
    bounds: Bounds,
    websocket: bool,
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
    let relay = Arc::new(Relay {
        moved: Activity::since(started),
        closing: AtomicBool::new(false),
        sides: [AtomicU8::new(AT_BOUNDARY), AtomicU8::new(AT_BOUNDARY)],
        settled: Notify::new(),
        ended: Notify::new(),
    });
    let framed = |side| websocket.then_some(side);
    let mut client = Counted::new(client, Arc::clone(&relay), framed(TO_CLIENT));
    let mut upstream = Counted::new(upstream, Arc::clone(&relay), framed(TO_UPSTREAM));
    let mut shutdown = shared.shutdown.clone();
    let (end, open) = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let watch = async {
            if *shutdown.borrow_and_update() {
                return End::Drained;
            }
            tokio::select! {
                end = watchdog(&bounds, &clock, &relay.moved, started) => end,
                _ = shutdown.changed() => End::Drained,
            }
        };
        tokio::pin!(watch);
        // Why: once a side had ended, the relay only half-closed the other and waited for it
        // to end too: a client gone (its socket closed, an HTTP/2 stream reset) left the
        // tunnel holding the upstream connection and a `max_connections` slot until an
        // upstream that never reads gave up, or the tunnel's idle timeout (5 minutes).
        // Regression: tests (it) edge::a_tunnel_the_client_left_frees_its_upstream_and_slot
        let half_closed = async {
            relay.ended.notified().await;
            // Quiet for the grace, not merely that long after the end: a half-closed stream
            // may still be sending (`docker attach` ends its input, then reads the output).
            // Regression: tests (it) edge::a_half_closed_tunnel_still_sending_stays_open
            loop {
                let due = relay.moved.last() + HALF_CLOSED_GRACE;
                if Instant::now() >= due {
                    break;
                }
                tokio::time::sleep_until(due).await;
            }
        };
        tokio::pin!(half_closed);
        let end = tokio::select! {
            r = &mut copy => if r.is_ok() { End::Closed } else { End::Failed },
            end = &mut watch => end,
            () = &mut half_closed => End::Closed,
        };
        let mut open = end.close_code().is_some();
        if open && websocket {
            // Why: a tunnel cut without a close frame is 1006 at the client, which no
            // WebSocket client tells from a network failure: an expired token was retried
            // as it was, not refreshed. A close frame may only go between two frames, so
            // each side first finishes the one it is in, within `FINISH_ALLOWANCE` bytes and
            // `CLOSE_GRACE`: a frame's length is the peer's to choose (up to 2^63), and a
            // revoked credential must not buy an unbounded transfer.
            // Regression: tests (it) edge::tunnel_is_closed_when_its_token_expires,
            // edge::a_frame_in_flight_at_expiry_is_finished_before_the_close_frame
            relay.closing.store(true, Relaxed);
            let grace = tokio::time::sleep(CLOSE_GRACE);
            tokio::pin!(grace);
            while relay.sides.iter().any(|s| s.load(Relaxed) == MID_FRAME) {
                tokio::select! {
                    _ = &mut copy => {
                        open = false;
                        break;
                    }
                    () = relay.settled.notified() => {}
                    () = &mut grace => break,
                }
            }
        }
        (end, open)
    };
    if !matches!(end, End::Closed | End::Failed) {
        shared.metrics.limit(end.as_str());
    }
    if let (true, true, Some(code)) = (open, websocket, end.close_code()) {
        let reason = end.as_str();
        let closing =
            async { tokio::join!(client.close(code, reason), upstream.close(code, reason)) };
        let _ = tokio::time::timeout(CLOSE_GRACE, closing).await;
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
            return crate::body::STREAM_EXPIRED;
        }
        if let (Some(at), Some((every, r))) = (next_recheck, &rechecks)
            && now >= at
        {
            match recheck_before(r, expiry_instant(expires_at, &clock, now)).await {
                Some(Verdict::Keep(exp)) => {
                    if exp.is_some() {
                        expires_at = exp;
                    }
                }
                Some(Verdict::Close) => return crate::body::STREAM_DENIED,
                Some(Verdict::Unknown) => {}
                // The credential expired while the re-check waited.
                None => continue,
            }
            next_recheck = Some(Instant::now() + *every);
            continue;
        }
        let mut wake = now + MAX_CHECK;
        if let Some(exp) = expires_at {
            wake = wake.min(now + clock.time_until(exp));
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
            // The hard bounds hold while the re-check waits (an introspection endpoint that
            // hangs): the expiry and the lifetime. Not the idle deadline: with an idle timeout
            // shorter than the endpoint's answer, every re-check of a busy tunnel was given up
            // and started again, and a revocation never applied; the idle deadline is looked at
            // once the re-check is done.
            let due = expiry_instant(expires_at, clock, now)
                .unwrap_or(lifetime_end)
                .min(lifetime_end);
            match recheck_before(r, Some(due)).await {
                Some(Verdict::Keep(exp)) => {
                    if exp.is_some() {
                        expires_at = exp;
                    }
                }
                Some(Verdict::Close) => return End::Denied,
                Some(Verdict::Unknown) => {}
                // The expiry or the lifetime came while the re-check waited: the loop ends it.
                None => continue,
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
            wake = wake.min(now + clock.time_until(exp));
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

/// When `expires_at` (Unix seconds) comes, as an instant (`None` without one). A manual clock
/// (tests) does not move with real time: its expiry is looked at every 100 ms.
fn expiry_instant(expires_at: Option<u64>, clock: &Clock, now: Instant) -> Option<Instant> {
    let exp = expires_at?;
    let mut at = now + clock.time_until(exp);
    if clock.is_manual() {
        at = at.min(now + Duration::from_millis(100));
    }
    Some(at)
}

/// [`recheck`], given up at `due` (`None` then).
///
/// Why: a re-check waited for the introspection endpoint (up to its timeout) with every other
/// bound paused: a tunnel or long response whose credential expired during the wait stayed
/// open until the endpoint answered, 9 s past `exp` with a 10 s timeout.
/// Regression: tests (it) edge::a_credential_expires_on_time_while_its_recheck_waits
async fn recheck_before(r: &Recheckable, due: Option<Instant>) -> Option<Verdict> {
    match due {
        Some(due) => tokio::time::timeout_at(due, recheck(r)).await.ok(),
        None => Some(recheck(r).await),
    }
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
                DenyKind::AuthnUnavailable
                | DenyKind::DelegateUnavailable
                | DenyKind::AssertionUnavailable => {
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

/// An upgraded stream that records when its reads and writes move bytes and, in a WebSocket
/// tunnel, follows the frames written to it.
struct Counted {
    io: TokioIo<Upgraded>,
    relay: Arc<Relay>,
    /// `TO_CLIENT` or `TO_UPSTREAM` in a WebSocket tunnel.
    side: Option<usize>,
    frames: Frames,
    /// Bytes it may still take, once closing, to finish its frame.
    allowance: usize,
    /// Whether it told the relay's watch that it is done closing (it tells once).
    told: bool,
}

impl Counted {
    fn new(io: Upgraded, relay: Arc<Relay>, side: Option<usize>) -> Self {
        Self {
            io: TokioIo::new(io),
            relay,
            side,
            frames: Frames::default(),
            allowance: FINISH_ALLOWANCE,
            told: false,
        }
    }

    /// Tells the watch, once, that this closing side is done (its state already stored).
    fn tell(&mut self) {
        if !self.told {
            self.told = true;
            self.relay.settled.notify_one();
        }
    }

    /// Ends this side of a WebSocket tunnel the gateway closes: its close frame (if what it
    /// was written ends between frames), the end of the stream, then whatever it still sends
    /// (its own close frame) read and dropped until it closes too, so that the connection
    /// does not end in a reset that could discard the close frame before it is read.
    async fn close(&mut self, code: u16, reason: &str) {
        let Some(side) = self.side else { return };
        if !self.frames.at_boundary() {
            return;
        }
        let frame = wsframe::close_frame(code, reason, side == TO_UPSTREAM);
        if self.io.write_all(&frame).await.is_err() || self.io.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 512];
        while matches!(self.io.read(&mut sink).await, Ok(n) if n > 0) {}
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
            self.relay.moved.touch();
        } else if matches!(polled, Poll::Ready(Ok(()))) && buf.remaining() > 0 {
            // Its end of file: the tunnel has `HALF_CLOSED_GRACE` left.
            self.relay.ended.notify_one();
        }
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(side) = this.side else {
            let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
            if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
                this.relay.moved.touch();
            }
            return polled;
        };
        // Closing: no byte past the end of the current frame (the close frame goes there),
        // and no more than the allowance to get there.
        let closing = this.relay.closing.load(Relaxed);
        let mut limit = buf.len();
        if closing {
            let mut ahead = this.frames;
            limit = ahead.advance(buf, true).min(this.allowance);
            if limit == 0 {
                if !this.frames.at_boundary() {
                    this.relay.sides[side].store(GIVEN_UP, Relaxed);
                }
                // Why no waker: this side takes no more bytes, ever; the watch drops the relay
                // once no side is still finishing a frame, or at `CLOSE_GRACE`. It is told
                // once: told at every poll, it was woken again at once, and the relay spun a
                // core for the whole grace while the other side finished a frame. No test: the
                // CPU of an in-process gateway is not the test's to tell apart (measured by
                // hand: 0.48 s per 0.5 s before, 0.01 s after).
                this.tell();
                return Poll::Pending;
            }
        }
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, &buf[..limit]);
        if let Poll::Ready(Ok(n)) = polled
            && n > 0
        {
            this.frames.advance(&buf[..n], false);
            let state = match (this.frames.at_boundary(), closing && this.allowance == n) {
                (true, _) => AT_BOUNDARY,
                (false, false) => MID_FRAME,
                (false, true) => GIVEN_UP,
            };
            this.relay.sides[side].store(state, Relaxed);
            this.relay.moved.touch();
            if closing {
                this.allowance -= n;
                if state != MID_FRAME {
                    this.tell();
                }
            }
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
