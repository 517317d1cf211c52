//! Budgets shared by a fleet of gateways in Redis: the GCRA of [`super::gcra`] as one Lua
//! script, atomic per key, on Redis's own clock (`TIME`), so gateway clocks never matter.
//!
//! The script is sent once (`SCRIPT LOAD`, by the client on the first `NOSCRIPT`) and then
//! called by its SHA-1 (`EVALSHA`), again after a Redis restart forgets it. One multiplexed
//! connection pipelines every check and reconnects by itself: to one server (redis-rs
//! `ConnectionManager`), to each master of a Redis Cluster, or to the master a Sentinel names
//! (`target.rs`).
//!
//! Invariants:
//! - A call never takes longer than `redis.timeout`; then, or on any error or unexpected
//!   reply, the limit's `on_redis_failure` decides.
//! - After `breaker_failures` failures in a row the breaker opens: no call at all until
//!   `breaker_cool_down` has passed, so a dead Redis costs a request nothing. Then one request
//!   probes; its success closes the breaker, its failure opens it for another cool-down.
//! - The password is read at load and kept in the connection settings only; the URL and
//!   settings are never logged with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use self::target::{Conn, Settings, Target};
use super::gcra::{Mode, Plan, Room, Wait};
use crate::config::FieldError;
use crate::config::raw::RawRedis;
use crate::telemetry::metrics::Histogram;

mod target;

/// The GCRA of [`super::gcra`], step for step, in microseconds. KEYS[1]: the key, the only
/// one it touches (so a Redis Cluster runs it on the master of that key's slot). ARGV: mode
/// (`spend`, `peek` or `refund`: one interval back on each TAT, never behind now), the rate's
/// interval and tolerance, the quota's (0 0: none).
/// Returns `{0, wait_us, refused_by_quota}` when refused, else `{1, rate_debt_us,
/// quota_debt_us}`: how far each TAT is ahead of now once the request is spent (for
/// `RateLimit-Remaining` and `-Reset`, [`Plan::room`]).
pub const SCRIPT: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', KEYS[1], 'r', 'ri', 'q', 'qi', 'rt', 'qt')
-- Microseconds since 1970 are 16 digits: written as integers, never in exponent form.
local function int(x) return string.format('%.0f', x) end
local clamped = false
-- The furthest stored time, in the terms it was stored in: a debt read rescaled still ends
-- there, whatever the rescaling.
local keep = now
local function tat(field, v, vi, vt, interval)
  v = tonumber(v)
  vi = tonumber(vi)
  vt = tonumber(vt)
  -- (`v ~= v`: a stored `nan`, which reads as a number, is no time.)
  if not v or v ~= v or not vi or vi <= 0 or v <= now then return now end
  -- Never further ahead than the limit that wrote it could put it (its tolerance and one
  -- interval): one stored past that (Redis's clock stepped back after a failover, a hand
  -- edit) would refuse the key for as long as it is ahead. Wholly spent instead, and written
  -- so (a refusal writes nothing else): the next read starts from there.
  if vt and vt >= 0 and v > now + vt + vi then
    v = now + vt + vi
    redis.call('HSET', KEYS[1], field, int(v))
    clamped = true
  end
  keep = math.max(keep, v)
  if vi == interval then return v end
  return now + math.floor((v - now) * interval / vi)
end
local ri, rt = tonumber(ARGV[2]), tonumber(ARGV[3])
local qi, qt = tonumber(ARGV[4]), tonumber(ARGV[5])
local r = tat('r', s[1], s[2], s[5], ri)
local q = now
if qi > 0 then q = tat('q', s[3], s[4], s[6], qi) end
-- A clamped key lives as long as what is left of it (its expiry was as far ahead).
if clamped then redis.call('PEXPIRE', KEYS[1], math.ceil((keep - now) / 1000) + 1) end
if ARGV[1] == 'refund' then
  if r <= now and q <= now then return {1, 0, 0} end
  r = math.max(r - ri, now)
  -- (A debt carried over a tightening can be further ahead than this limit's reach: the
  -- reach written covers it.)
  redis.call('HSET', KEYS[1], 'r', int(r), 'ri', int(ri), 'rt', int(math.max(rt, r - now - ri)))
  local until_idle = r - now
  if qi > 0 then
    q = math.max(q - qi, now)
    redis.call('HSET', KEYS[1], 'q', int(q), 'qi', int(qi), 'qt', int(math.max(qt, q - now - qi)))
    until_idle = math.max(until_idle, q - now)
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(until_idle / 1000) + 1)
  return {1, r - now, q - now}
end
local wait = r - rt - now
local by_quota = 0
if qi > 0 then
  local qw = q - qt - now
  if qw > wait then
    wait = qw
    by_quota = 1
  end
end
if wait > 0 then return {0, wait, by_quota} end
local rd, qd = r - now, q - now
if ARGV[1] == 'spend' then
  rd = rd + ri
  if qi > 0 then qd = qd + qi end
  redis.call('HSET', KEYS[1], 'r', int(r + ri), 'ri', int(ri), 'rt', int(rt))
  local until_idle = r + ri - now
  if qi > 0 then
    redis.call('HSET', KEYS[1], 'q', int(q + qi), 'qi', int(qi), 'qt', int(qt))
    until_idle = math.max(until_idle, q + qi - now)
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(until_idle / 1000) + 1)
end
return {1, rd, qd}
";

/// Latency buckets of a Redis call, seconds.
const CALL_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// How often the same kind of failed call is logged again.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The Redis rate limits share, with its connection and breaker.
pub struct RedisStore {
    fingerprint: crate::config::Fingerprint,
    target: Target,
    /// Made on first use; dropped after a reply that makes no sense (a Sentinel's master:
    /// after any failure). Shared with the task that looks up a Sentinel's master.
    conn: Arc<ArcSwapOption<Conn>>,
    script: redis::Script,
    timeout: Duration,
    connect_timeout: Duration,
    epoch: tokio::time::Instant,
    started: AtomicBool,
    prefix: Box<str>,
    breaker: Breaker,
    /// When (as [`Self::now`]) a failed call was last logged, and a digest of its kind.
    warned_at: AtomicU64,
    warned_what: AtomicU64,
    /// When (as [`Self::now`]) Redis last answered a call, anything; 0: never.
    answered_at: AtomicU64,
    /// When (as [`Self::now`]) the first call Redis has not answered yet was sent: the
    /// earliest sent since [`Self::answered_at`], if later than it; 0: none since a reset.
    waiting_since: AtomicU64,
    /// Calls, failures and latency.
    pub metrics: RedisMetrics,
}

/// What the Redis store counts.
#[derive(Debug)]
pub struct RedisMetrics {
    /// Calls made.
    pub calls: AtomicU64,
    /// Calls that failed (connection, protocol, server error, unexpected reply).
    pub errors: AtomicU64,
    /// Calls past `timeout`.
    pub timeouts: AtomicU64,
    /// Checks answered without a call because the breaker was open.
    pub short_circuited: AtomicU64,
    /// Latency of the calls that answered.
    pub latency: Histogram,
}

/// Why Redis gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RedisError {
    /// Past the time budget.
    #[error("redis call timed out")]
    Timeout,
    /// A connection, protocol or server error, or a reply the script never gives.
    #[error("redis call failed")]
    Failed,
    /// The breaker is open: not asked.
    #[error("redis circuit breaker open")]
    Open,
    /// Redis refused this limit's key (an ACL without it, a key of another type): the
    /// server is well and other limits' keys may pass, so the breaker is not told.
    #[error("redis refused the limit's key")]
    KeyRefused,
}

/// Consecutive-failure circuit breaker.
#[derive(Debug)]
struct Breaker {
    threshold: u32,
    cool_down: Duration,
    failures: AtomicU32,
    /// Nanoseconds (of [`RedisStore::now`]) until which it is open; 0: closed.
    open_until: AtomicU64,
    /// When (as `open_until`) the half-open breaker's probe was let through; 0: none.
    probe_since: AtomicU64,
    /// How long a probe holds the half-open breaker: past it, another is let through.
    probe_lease: u64,
}

/// The breaker's state, for the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed = 0,
    /// No call until the cool-down ends.
    Open = 1,
    /// One probe goes through.
    HalfOpen = 2,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("target", &self.target.kind())
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .field("breaker", &self.breaker_state())
            .finish_non_exhaustive()
    }
}

pub use crate::secret::redacted_url;

// === impl RedisStore ===

impl RedisStore {
    /// Compiles the `redis:` section; `previous` is kept (connection, breaker, counters) when
    /// nothing changed, the password included.
    pub fn compile(
        raw: &RawRedis,
        base_dir: &std::path::Path,
        previous: Option<&Arc<Self>>,
        watched: &mut Vec<std::path::PathBuf>,
    ) -> Result<Arc<Self>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let password = match &raw.password {
            None => None,
            Some(secret) => match crate::secret::read(secret, base_dir, watched) {
                Ok(p) => Some(p),
                Err(m) => {
                    errors.push(FieldError::new("password", m));
                    None
                }
            },
        };
        let sentinel_password = match raw.sentinel.as_ref().and_then(|s| s.password.as_ref()) {
            None => None,
            Some(secret) => match crate::secret::read(secret, base_dir, watched) {
                Ok(p) => Some(p),
                Err(m) => {
                    errors.push(FieldError::new("sentinel.password", m));
                    None
                }
            },
        };
        let hex = |p: &Option<crate::secret::Secret<Vec<u8>>>| {
            p.as_ref().map(|p| crate::secret::hex(&digest(p.expose())))
        };
        let found = errors.len();
        let tls = tls_files(raw, base_dir, watched, &mut errors);
        // A file refused is said once, at its field: not again by the client it would make.
        let tls_usable = errors.len() == found;
        // The files' contents count too: a renewed certificate rebuilds the connection.
        let tls_digest = tls.as_ref().map(|(_, d)| crate::secret::hex(d));
        let fingerprint = crate::config::Fingerprint::of(&[
            raw,
            &hex(&password),
            &hex(&sentinel_password),
            &tls_digest,
        ]);
        if let Some(p) = previous.filter(|p| p.fingerprint == fingerprint) {
            return Ok(Arc::clone(p));
        }
        let (password, sentinel_password) = match (
            text(&password, "password"),
            text(&sentinel_password, "sentinel.password"),
        ) {
            (Ok(p), Ok(s)) => (p, s),
            (p, s) => {
                errors.extend(p.err());
                errors.extend(s.err());
                (None, None)
            }
        };
        let settings = Settings {
            username: raw.username.as_deref(),
            password,
            sentinel_username: raw.sentinel.as_ref().and_then(|s| s.username.as_deref()),
            sentinel_password,
            // Why: the connection's stall bound cut every call at `connect_timeout` (1 s by
            // default) whatever the check's own `timeout` said (5 s was cut at 1 s).
            connect_timeout: raw.connect_timeout.max(raw.timeout),
            tls: tls.filter(|_| tls_usable).map(|(certs, _)| certs),
        };
        let target = match Target::compile(raw, &settings) {
            Ok(t) => Some(t),
            Err(mut es) => {
                errors.append(&mut es);
                None
            }
        };
        if raw.timeout.is_zero() {
            errors.push(FieldError::new("timeout", "must be more than 0"));
        }
        if raw.breaker_failures == 0 {
            errors.push(FieldError::new("breaker_failures", "must be at least 1"));
        }
        let Some(target) = target.filter(|_| errors.is_empty()) else {
            return Err(errors);
        };
        let metrics = match previous {
            Some(p) => RedisMetrics::carried(&p.metrics),
            None => RedisMetrics::new(),
        };
        Ok(Arc::new(Self {
            fingerprint,
            target,
            conn: Arc::new(ArcSwapOption::empty()),
            script: redis::Script::new(SCRIPT),
            timeout: raw.timeout,
            connect_timeout: raw.connect_timeout,
            epoch: tokio::time::Instant::now(),
            started: AtomicBool::new(false),
            warned_at: AtomicU64::new(0),
            warned_what: AtomicU64::new(0),
            answered_at: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
            prefix: raw.key_prefix.as_str().into(),
            breaker: Breaker::new(
                raw.breaker_failures,
                raw.breaker_cool_down,
                raw.timeout.saturating_mul(2),
            ),
            metrics,
        }))
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state(self.now())
    }

    /// Nanoseconds since the store was made (never 0).
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Connects and loads the script in the background, so the first request finds both
    /// ready (a request would do it too, within its time budget).
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let store = Arc::clone(self);
        tokio::spawn(async move {
            if let Some(conn) = store.connection() {
                let mut conn = Conn::clone(&conn);
                let loaded = tokio::time::timeout(
                    store.connect_timeout,
                    load_script(&store.script, &mut conn),
                )
                .await;
                match loaded {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) if !e.is_io_error() => tracing::warn!(
                        kind = ?e.kind(),
                        code = e.code().unwrap_or("-"),
                        "Redis refused the gateway at startup; limits use their on_redis_failure until it answers"
                    ),
                    _ => tracing::warn!(
                        "Redis not reachable at startup; limits use their on_redis_failure until it is"
                    ),
                }
            }
        });
    }

    /// Checks one request of `key` under `plan` in Redis, within the time budget.
    pub async fn check(
        &self,
        key: &str,
        plan: &Plan,
        mode: Mode,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Result<Room, Wait>, RedisError> {
        if !self.breaker.admit(self.now()) {
            self.metrics.short_circuited.fetch_add(1, Ordering::Relaxed);
            return Err(RedisError::Open);
        }
        let Some(used) = self.connection() else {
            self.breaker.failure(self.now());
            self.metrics.errors.fetch_add(1, Ordering::Relaxed);
            return Err(RedisError::Failed);
        };
        // Why: Redis counts in whole microseconds, and rounding the interval down admitted
        // more than the limit (600,000 a second with a burst of 10 ran as 1,000,000 with a
        // burst of 15). Rounded up, with the burst kept: never more than asked.
        // Regression: tests ratelimit::redis::tests::microseconds_never_admit_more
        let (ri, rt) = in_micros(&plan.rate);
        let (qi, qt) = plan.quota.as_ref().map_or((0, 0), in_micros);
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.script.get_hash())
            .arg(1)
            .arg(key)
            .arg(match mode {
                Mode::Spend => "spend",
                Mode::Peek => "peek",
                Mode::Refund => "refund",
            })
            .arg(ri)
            .arg(rt)
            .arg(qi)
            .arg(qt);
        self.metrics.calls.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn::clone(&used);
        let start = tokio::time::Instant::now();
        let sent = self.now();
        if self.waiting_since.load(Ordering::Relaxed) <= self.answered_at.load(Ordering::Relaxed) {
            self.waiting_since.store(sent, Ordering::Relaxed);
        }
        // Why: a healthy Redis closes idle connections (its `timeout`, a load balancer's idle
        // cut, a failover's `CLIENT KILL`), and the first call on such a connection failed:
        // a spurious 503 on a limit failing closed, an unchecked pass on one failing open,
        // after every quiet spell. A call whose connection was found dropped is made once
        // more, on the connection the manager makes anew, within the same budget. A repeat
        // can at worst spend twice (stricter, never looser); a refund is not repeated, as
        // a second one would give back a try that was not spent. A Sentinel's connection
        // is dropped on failure and looked up again instead (`reset`).
        // Regression: tests (it) redis::a_connection_redis_closed_is_replaced_without_a_failure
        let again = mode != Mode::Refund && !self.target.drops_on_failure();
        let budget = crate::request::facts::call_budget(self.timeout, deadline);
        let reply = tokio::time::timeout(budget, async {
            match invoke(&self.script, &call, &mut conn).await {
                Err(e) if again && e.is_connection_dropped() => {
                    self.metrics.calls.fetch_add(1, Ordering::Relaxed);
                    invoke(&self.script, &call, &mut conn).await
                }
                first => first,
            }
        })
        .await;
        if reply.is_ok() {
            self.answered_at.store(self.now(), Ordering::Relaxed);
        }
        // Why: a gateway too busy to read its answers in time (a flood of requests on its
        // own cores) counted its late reads as Redis failing: the breaker opened on a
        // healthy Redis, and every limit, everyone's, went to its `on_redis_failure` (a
        // flood let 12 of 40 through another client's limit of 5, failing open). A call
        // that ran out of time while other calls were answered meanwhile, or that this
        // gateway got back to a whole budget after it ran out (its own cores were busy),
        // still takes its limit's `on_redis_failure`, but says nothing against Redis: the
        // breaker opens when Redis stops answering, not when the gateway is overloaded.
        // Regression: tests (it) redis::a_gateway_too_busy_to_read_answers_keeps_the_breaker_closed
        let mut not_redis = false;
        let outcome = match reply {
            Err(_) => {
                // Why: a connection that stopped answering without being closed (a NAT or
                // firewall dropping the flow silently) was kept: every call timed out on it,
                // the breaker's probes too, and the limits stayed on their `on_redis_failure`
                // for minutes, until the kernel gave the connection up (1,000 of 1,000 let
                // through a limit of 220, failing open). A connection on which nothing has
                // answered for longer than a connect takes is dropped, and the next call
                // connects afresh; one slow call among answers keeps it.
                // Regression: tests (it) redis::a_connection_that_stopped_answering_is_replaced
                // Why counted from the first call left unanswered, not from the last answer:
                // after a quiet spell, the first slow call dropped a healthy connection.
                // Regression: tests (it) redis::one_slow_call_after_a_quiet_spell_keeps_the_connection
                let waiting = self.waiting_since.load(Ordering::Relaxed);
                let stalled = waiting > self.answered_at.load(Ordering::Relaxed)
                    && u128::from(self.now().saturating_sub(waiting))
                        > self.connect_timeout.max(self.timeout).as_nanos();
                if self.target.drops_on_failure() || stalled {
                    self.reset(&used);
                }
                // Not a half-open breaker's probe: its timeout reopens it for a cool-down.
                not_redis = (self.answered_at.load(Ordering::Relaxed) > sent
                    || start.elapsed() >= budget.saturating_mul(2))
                    && self.breaker.state(self.now()) == BreakerState::Closed;
                self.warn_failure("Timeout", "-");
                Err(RedisError::Timeout)
            }
            // Why: the breaker is the whole Redis's, and a refusal of one key (an ACL that
            // leaves a limit's keys out) counted toward it: anyone could send requests to
            // that limit until the breaker opened and switched every other limit off (30 of
            // 30 let through a limit of 5, failing open). Such a refusal answers this limit
            // by its `on_redis_failure`, and keeps the connection and the breaker as they are.
            // Regression: tests (it) redis::a_refused_key_does_not_open_the_breaker_for_other_limits
            Ok(Err(e)) if refuses_the_key(&e) => {
                self.warn_failure(&format!("{:?}", e.kind()), e.code().unwrap_or("-"));
                Err(RedisError::KeyRefused)
            }
            Ok(Err(e)) => {
                self.warn_failure(&format!("{:?}", e.kind()), e.code().unwrap_or("-"));
                // A server or protocol error leaves a connection that may keep answering
                // nonsense (a proxy, a wrong port): start afresh. IO errors reconnect anyway,
                // but to the same address: a Sentinel's master is looked up again.
                if self.target.drops_on_failure()
                    || (!e.is_io_error() && !e.is_connection_dropped())
                {
                    self.reset(&used);
                }
                Err(RedisError::Failed)
            }
            Ok(Ok(v)) => match v.as_slice() {
                [1, rate_debt, quota_debt] if *rate_debt >= 0 && *quota_debt >= 0 => {
                    let quota = plan
                        .quota
                        .as_ref()
                        .map_or(0, |q| debt_back(*quota_debt, qi, q));
                    Ok(Ok(plan.room(debt_back(*rate_debt, ri, &plan.rate), quota)))
                }
                [0, wait, by_quota] if *wait > 0 => {
                    let requests = match (by_quota, plan.quota) {
                        (1, Some(q)) => q.limit(),
                        _ => plan.rate.limit(),
                    };
                    Ok(Err(Wait {
                        nanos: u64::try_from(*wait).unwrap_or(0).saturating_mul(1_000),
                        requests,
                    }))
                }
                // Whatever answered is not running our script: start afresh.
                _ => {
                    self.reset(&used);
                    Err(RedisError::Failed)
                }
            },
        };
        match outcome {
            Ok(_) => {
                self.metrics.latency.observe(start.elapsed());
                self.answered();
            }
            Err(RedisError::KeyRefused) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                // Redis answered, at once: a probe's answer closes a half-open breaker (its
                // refusal held the breaker for the probe's lease, and a flood of refused keys
                // won most probes). Otherwise the count of failures in a row stands: a refusal
                // between timeouts must not keep the breaker from opening.
                if self.breaker.state(self.now()) == BreakerState::HalfOpen {
                    self.answered();
                }
            }
            Err(e) => {
                if e == RedisError::Timeout {
                    self.metrics.timeouts.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                }
                if !not_redis && self.breaker.failure(self.now()) {
                    tracing::warn!(
                        error = %e,
                        cool_down_ms = u64::try_from(self.breaker.cool_down.as_millis()).unwrap_or(u64::MAX),
                        "Redis circuit breaker opened; limits use their on_redis_failure"
                    );
                }
            }
        }
        outcome
    }

    /// Redis answered: the breaker's failures in a row end, and an open breaker closes
    /// (logged: the limits are checked in Redis again).
    fn answered(&self) {
        if self.breaker.success() {
            tracing::info!("Redis circuit breaker closed: limits are checked in Redis again");
        }
    }

    /// Logs a failed call: the first of each kind at once, then at most one every
    /// [`WARN_EVERY`].
    ///
    /// Why: a wrong password, an ACL refusal or a read-only replica were all "redis call
    /// failed" (counted as errors, or as timeouts while reconnecting): the operator could not
    /// tell them from an outage. The log names the error's kind and Redis's code
    /// (`WRONGPASS`, `NOPERM`, `READONLY`), never its text, which may echo an address or a
    /// name. Once per streak of failures was not enough: the streak of a wrong password
    /// starts with the reconnect's timeouts, and a success on another node of a cluster ends
    /// one at every request. Regression: tests (it) redis::a_wrong_redis_password_is_logged_as_such
    fn warn_failure(&self, kind: &str, code: &str) {
        let what = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (kind, code).hash(&mut h);
            h.finish() | 1
        };
        let now = self.now();
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = self.warned_what.load(Ordering::Relaxed) != what
            || now.saturating_sub(last) >= u64::try_from(WARN_EVERY.as_nanos()).unwrap_or(u64::MAX);
        if due
            && self
                .warned_at
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.warned_what.store(what, Ordering::Relaxed);
            tracing::warn!(
                kind,
                code,
                "Redis call failed; limits use their on_redis_failure (logged once per kind, then every 10 s)"
            );
        }
    }

    /// The connection, made on first use (inside the runtime: a config is also compiled
    /// outside one) or after a reset.
    /// A Sentinel's master is looked up in the background: `None` until it is found.
    fn connection(&self) -> Option<Arc<Conn>> {
        if let Some(c) = &*self.conn.load() {
            return Some(Arc::clone(c));
        }
        let c = Arc::new(self.target.connect(&self.conn)?);
        self.conn.store(Some(Arc::clone(&c)));
        Some(c)
    }

    /// Drops `used`, unless another call already replaced it; a Sentinel's master is looked
    /// up again at once (not only on the next call, which the breaker may hold back).
    fn reset(&self, used: &Arc<Conn>) {
        let was = self.conn.compare_and_swap(used, None);
        let dropped = was.as_ref().is_some_and(|c| Arc::ptr_eq(c, used));
        if dropped {
            // The next connection's silence counts from its first call.
            self.waiting_since.store(0, Ordering::Relaxed);
        }
        if dropped && self.target.drops_on_failure() {
            let _ = self.target.connect(&self.conn);
        }
    }
}

/// A password as text, if any.
fn text<'a>(
    p: &'a Option<crate::secret::Secret<Vec<u8>>>,
    field: &str,
) -> Result<Option<&'a str>, FieldError> {
    match p {
        None => Ok(None),
        Some(p) => std::str::from_utf8(p.expose())
            .map(Some)
            .map_err(|_| FieldError::new(field, "must be UTF-8 text")),
    }
}

/// The `ca_file`, `client_cert` and `client_key` files, read (relative to `base_dir`) and
/// watched, with a digest of their contents; `None` when none is set. Errors name the field.
fn tls_files(
    raw: &RawRedis,
    base_dir: &std::path::Path,
    watched: &mut Vec<std::path::PathBuf>,
    errors: &mut Vec<FieldError>,
) -> Option<(redis::TlsCertificates, Vec<u8>)> {
    let mut read = |field: &str, file: &Option<std::path::PathBuf>| {
        let path = base_dir.join(file.as_ref()?);
        watched.push(path.clone());
        // Why the config's reader: `std::fs::read` of a `ca_file` pointing at a pipe waited
        // for a writer, and the reload with it.
        match crate::config::files::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                errors.push(FieldError::new(
                    field,
                    format!("cannot read {}: {e}", path.display()),
                ));
                None
            }
        }
    };
    let ca = read("ca_file", &raw.ca_file);
    let cert = read("client_cert", &raw.client_cert);
    let key = read("client_key", &raw.client_key);
    // Checked as a listener's or an upstream's are (a CA file of certificates that are
    // trust anchors; a client certificate matching its key; one expired or not for clients
    // is warned about by the config compiler), so that a bad file is said at its field now,
    // not as an unexplained failure of every check later.
    if ca.is_some()
        && let Some(file) = &raw.ca_file
    {
        let anchors = crate::tls::certs::read_certs(
            &base_dir.join(file),
            crate::tls::certs::TlsField::CaFile,
        )
        .map_err(|e| e.to_string())
        .and_then(|certs| {
            let mut store = rustls::RootCertStore::empty();
            certs.into_iter().try_for_each(|c| {
                store
                    .add(c)
                    .map_err(|e| format!("a certificate that is no trust anchor: {e}"))
            })
        });
        if let Err(message) = anchors {
            errors.push(FieldError::new("ca_file", message));
        }
    }
    match (&raw.client_cert, &raw.client_key) {
        (Some(c), Some(k)) if cert.is_some() && key.is_some() => {
            if let Err(e) = crate::tls::certs::load_cert_for(
                &base_dir.join(c),
                &base_dir.join(k),
                crate::tls::certs::Purpose::Client,
            ) {
                let field = if e.field() == "key" {
                    "client_key"
                } else {
                    "client_cert"
                };
                errors.push(FieldError::new(field, e.to_string()));
            }
        }
        (Some(_), None) => errors.push(FieldError::new(
            "client_key",
            "required with `client_cert`: the key of the client certificate",
        )),
        (None, Some(_)) => errors.push(FieldError::new(
            "client_cert",
            "required with `client_key`: the certificate of that key",
        )),
        _ => {}
    }
    if raw.ca_file.is_none() && raw.client_cert.is_none() && raw.client_key.is_none() {
        return None;
    }
    let mut d = Vec::new();
    for part in [&ca, &cert, &key] {
        d.extend(digest(part.as_deref().unwrap_or_default()));
    }
    let certs = redis::TlsCertificates {
        client_tls: cert
            .zip(key)
            .map(|(client_cert, client_key)| redis::ClientTlsConfig {
                client_cert,
                client_key,
            }),
        root_cert: ca,
    };
    Some((certs, digest(&d)))
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

// === impl RedisMetrics ===

impl RedisMetrics {
    fn new() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            short_circuited: AtomicU64::new(0),
            latency: Histogram::new(CALL_BOUNDS),
        }
    }

    /// New counters starting where `previous` left off (a changed `redis:` section), so the
    /// exported counters never go back.
    fn carried(previous: &Self) -> Self {
        let n = |a: &AtomicU64| AtomicU64::new(a.load(Ordering::Relaxed));
        Self {
            calls: n(&previous.calls),
            errors: n(&previous.errors),
            timeouts: n(&previous.timeouts),
            short_circuited: n(&previous.short_circuited),
            latency: previous.latency.clone(),
        }
    }
}

/// Whether Redis refused the call for its key rather than for its own state: an ACL that
/// leaves the key out (`NOPERM`), a key holding another type (`WRONGTYPE`), keys of
/// different slots (`CROSSSLOT`). Another limit's key may well pass.
fn refuses_the_key(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::NoPerm | ServerErrorKind::CrossSlot)
    ) || e.code() == Some("WRONGTYPE")
}

/// `SCRIPT LOAD`, its answer checked: Redis names a script by its SHA-1, and an answer naming
/// another comes from something that is not running it (a proxy, an impostor).
///
/// Why not `redis::Script::load_async`: it checks the answer with a debug assertion, so in a
/// debug build such an answer panicked every limited request (the connection dropped, a gRPC
/// Check cancelled, which Envoy's `failure_mode_allow` lets through), and in a release build
/// it was taken as loaded. Regression: tests (it) redis::a_wrong_script_hash_is_a_redis_failure
async fn load_script(script: &redis::Script, conn: &mut Conn) -> redis::RedisResult<()> {
    let hash: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query_async(conn)
        .await?;
    if hash != script.get_hash() {
        return Err(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "SCRIPT LOAD named another script",
        )));
    }
    Ok(())
}

/// `call` (an `EVALSHA` of `script`), loading the script once if Redis has forgotten it.
async fn invoke(
    script: &redis::Script,
    call: &redis::Cmd,
    conn: &mut Conn,
) -> redis::RedisResult<Vec<i64>> {
    match call.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            load_script(script, conn).await?;
            call.query_async(conn).await
        }
        first => first,
    }
}

// === impl Breaker ===

impl Breaker {
    /// `lease`: how long a probe may take (the call's timeout, with room) before it counts as
    /// abandoned.
    fn new(threshold: u32, cool_down: Duration, lease: Duration) -> Self {
        Self {
            threshold,
            cool_down,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probe_since: AtomicU64::new(0),
            probe_lease: u64::try_from(lease.as_nanos()).unwrap_or(u64::MAX).max(1),
        }
    }

    /// Whether a call may be made at `now`.
    ///
    /// Why: half-open, one probe goes at a time, and only its answer closed or reopened the
    /// breaker. A probe whose request was dropped on the way (the client gone, a door's
    /// deadline, Envoy cancelling the Check) never answered, and the breaker stayed half-open
    /// with a probe "in flight" until a restart: no call to Redis again, every `allow` limit
    /// off. A probe now holds the breaker for its lease only (twice the call's timeout, which
    /// bounds a real probe); then another goes.
    /// Regression: tests::an_abandoned_probe_does_not_hold_the_breaker
    fn admit(&self, now: u64) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        // Half-open: one probe at a time.
        let since = self.probe_since.load(Ordering::Acquire);
        if since != 0 && now.saturating_sub(since) < self.probe_lease {
            return false;
        }
        self.probe_since
            .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Counts a success; true when it closed the breaker.
    fn success(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        let was = self.open_until.swap(0, Ordering::AcqRel);
        self.probe_since.store(0, Ordering::Release);
        was != 0
    }

    /// Counts a failure at `now`; true when it opened the breaker.
    fn failure(&self, now: u64) -> bool {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let probe_failed = self.probe_since.swap(0, Ordering::AcqRel) != 0;
        if probe_failed || n >= self.threshold {
            let until = now
                .saturating_add(u64::try_from(self.cool_down.as_nanos()).unwrap_or(u64::MAX))
                .max(1);
            let was = self.open_until.swap(until, Ordering::AcqRel);
            return was == 0;
        }
        false
    }

    fn state(&self, now: u64) -> BreakerState {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            BreakerState::Closed
        } else if now < until {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }
}

/// A rate's interval and tolerance in whole microseconds, as the script counts: the interval
/// rounded up, the tolerance the same number of intervals (the burst kept).
fn in_micros(rate: &super::gcra::Rate) -> (u64, u64) {
    let interval = rate.interval.div_ceil(1_000);
    let intervals = rate.tolerance.checked_div(rate.interval).unwrap_or(0);
    (interval, interval.saturating_mul(intervals))
}

/// A debt the script counted (`us` microseconds, in intervals of `interval_us`), as `rate`
/// counts it here: the same number of intervals, in nanoseconds.
///
/// Why: the script's interval is rounded up to whole microseconds; a debt read back as plain
/// nanoseconds was a fraction of an interval more than this process's exact interval, and
/// `RateLimit-Remaining` said one less than would pass (3 per 10 s: 1, 1, 0, where the
/// local limit says 2, 1, 0). Regression: tests::a_debt_reads_back_as_the_same_intervals
fn debt_back(us: i64, interval_us: u64, rate: &super::gcra::Rate) -> u64 {
    let us = u64::try_from(us).unwrap_or(0);
    if interval_us == 0 {
        return us.saturating_mul(1_000);
    }
    let ns = u128::from(us) * u128::from(rate.interval) / u128::from(interval_us);
    u64::try_from(ns).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debt_reads_back_as_the_same_intervals() {
        use super::super::gcra::{Plan, Rate};
        for (requests, per) in [(3, 10), (3, 1), (7, 86_400), (10, 1)] {
            let rate = Rate::new(requests, Duration::from_secs(per), None).unwrap();
            let (interval_us, _) = in_micros(&rate);
            let plan = Plan { rate, quota: None };
            // After k requests at once, the script's debt is k intervals.
            for k in 1..=requests {
                let debt = i64::try_from(u64::from(k) * interval_us).unwrap();
                let room = plan.room(debt_back(debt, interval_us, &plan.rate), 0);
                assert_eq!(
                    room.remaining,
                    requests - k,
                    "{requests} per {per} s, {k} spent"
                );
            }
        }
    }

    #[test]
    fn microseconds_never_admit_more() {
        use super::super::gcra::Rate;
        let rate = |requests, per, burst| Rate::new(requests, per, burst).unwrap();
        // 600,000 a second, burst 10: 1,667 ns, up to 2 µs (500,000 a second), burst kept.
        assert_eq!(
            in_micros(&rate(600_000, Duration::from_secs(1), Some(10))),
            (2, 18)
        );
        // Whole microseconds stay as they are.
        assert_eq!(
            in_micros(&rate(10, Duration::from_secs(1), None)),
            (100_000, 900_000)
        );
        assert_eq!(
            in_micros(&rate(1, Duration::from_secs(60), None)),
            (60_000_000, 0)
        );
        // A third of a second: 333,333,333 ns, 333,334 µs.
        assert_eq!(
            in_micros(&rate(3, Duration::from_secs(1), Some(2))),
            (333_334, 333_334)
        );
    }

    #[test]
    fn breaker_opens_probes_once_and_recovers() {
        const MS: u64 = 1_000_000;
        let b = Breaker::new(3, Duration::from_secs(1), Duration::from_millis(10));
        let t = 5_000 * MS;
        for _ in 0..2 {
            assert!(b.admit(t));
            assert!(!b.failure(t));
        }
        assert!(b.admit(t));
        assert!(b.failure(t), "the third failure in a row opens it");
        assert_eq!(b.state(t), BreakerState::Open);
        assert!(!b.admit(t + 999 * MS), "open: no call");
        let later = t + 1_001 * MS;
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert!(b.admit(later), "one probe");
        assert!(!b.admit(later), "and only one");
        b.failure(later);
        assert_eq!(
            b.state(later),
            BreakerState::Open,
            "a failed probe opens it again"
        );
        let again = later + 1_001 * MS;
        assert!(b.admit(again));
        b.success();
        assert_eq!(b.state(again), BreakerState::Closed);
        assert!(b.admit(again) && b.admit(again));
    }

    #[test]
    fn an_abandoned_probe_does_not_hold_the_breaker() {
        const MS: u64 = 1_000_000;
        let b = Breaker::new(1, Duration::from_secs(1), Duration::from_millis(10));
        let t = 5_000 * MS;
        assert!(b.admit(t));
        assert!(b.failure(t));
        let later = t + 1_001 * MS;
        assert!(b.admit(later), "a probe");
        // Its request is dropped: no success, no failure.
        assert!(!b.admit(later + 9 * MS), "within its lease, no other");
        assert!(b.admit(later + 10 * MS), "past it, another probe");
        assert!(!b.admit(later + 11 * MS), "one at a time still");
        b.success();
        assert_eq!(b.state(later + 11 * MS), BreakerState::Closed);
    }
}
