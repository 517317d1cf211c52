//! Rate limits: named GCRA limits, one budget per value of the limit's key, checked in the
//! decision core so every door counts alike and answers alike (429 with `Retry-After` and
//! `RateLimit-*`, or 503 `rate_limit_unavailable` when a fail-closed Redis limit cannot ask).
//!
//! A limit's budgets live in this process ([`local`]) or in Redis ([`redis`]: one server, a
//! Redis Cluster or a Sentinel's master), shared by every gateway of a fleet; both run the
//! same algorithm ([`gcra`]). A limit may choose its rate by
//! a tier (a claim, an API key's plan), add a long-window quota, run in shadow mode (counted,
//! never refusing), or count refusals instead of admissions (a brute-force guard, checked
//! before any credential is verified).
//!
//! Invariants:
//! - A reload that keeps a limit's definition keeps the limit itself. A changed definition
//!   keeps the limit's local store and counters, and its Redis keys (named by the limit's
//!   name and key, not its rate): the requests already spent stay spent, rescaled to the new
//!   rate, so tightening a limit never hands out a fresh burst.
//! - Nothing here logs a key's value (a principal, an address): only limit names.

pub mod attempts;
pub mod gcra;
pub mod key;
pub mod local;
pub mod redis;

use std::hash::Hasher as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderName;

use crate::authn::principal::{Principal, lookup};
use crate::config::FieldError;
use crate::config::raw::{RawBackend, RawCount, RawRateLimit, RawRedisFailure};
use crate::request::RequestFacts;
use crate::request::facts::Door;

use self::gcra::{Mode, Plan, Rate, Room, Wait};
use self::key::{CountBy, Sha256};
use self::local::LocalStore;
use self::redis::RedisStore;

/// One named limit.
pub struct Limit {
    /// Its name in `rate_limits`.
    pub name: Arc<str>,
    /// The definition as written: a reload that leaves it alone keeps the limit.
    fingerprint: crate::config::Fingerprint,
    key: CountBy,
    /// The rate of requests no tier names.
    plan: Plan,
    /// Where the tier is read (a claim path).
    tier: Option<Box<[Box<str>]>>,
    tiers: Box<[(Box<str>, Plan)]>,
    backend: Backend,
    on_failure: RawRedisFailure,
    /// Local budgets (the backend, or a Redis limit's fallback).
    local: Arc<LocalStore>,
    /// Counted, never refusing.
    pub shadow: bool,
    /// `RateLimit-*` on allowed requests (never in shadow mode).
    pub headers: bool,
    /// Response header naming the limit on requests shadow mode would have refused.
    pub shadow_header: Option<HeaderName>,
    /// What it counts.
    pub count: RawCount,
    /// Outcomes, kept across reloads.
    pub counters: Arc<LimitCounters>,
    /// A guard's attempts being checked, kept across reloads.
    attempts: Arc<attempts::Attempts>,
}

/// Where a limit's budgets live.
#[derive(Debug)]
enum Backend {
    Local,
    Redis(Arc<RedisStore>),
}

/// What one limit counted, by outcome and door ([`Door::index`]).
#[derive(Debug, Default)]
pub struct LimitCounters {
    /// Requests within the limit (for a guard: refusals recorded).
    pub allowed: [AtomicU64; 4],
    /// Requests refused.
    pub limited: [AtomicU64; 4],
    /// Requests shadow mode would have refused.
    pub shadow_limited: [AtomicU64; 4],
    /// Redis failures answered by `on_redis_failure`: allow, deny, local.
    pub fallback: [AtomicU64; 3],
    /// Unix second of the last fail-open warning.
    last_warned: AtomicU64,
}

/// A request over its limit: what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// The refusing rate's [`gcra::Rate::limit`] (`RateLimit-Limit`).
    pub limit: u32,
    /// Seconds until a request would pass (`Retry-After`, `RateLimit-Reset`), at least 1.
    pub retry_after: u64,
}

/// The answer of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Within the limit, with what is left (`None`: a Redis failure let it through).
    Allowed(Option<Room>),
    /// Over it, in shadow mode: let through.
    ShadowLimited,
    /// Over it.
    Limited(Throttle),
    /// Redis could not answer and the limit fails closed.
    Unavailable,
}

/// How often a limit failing open (or over to local budgets) says so in the log.
const WARN_EVERY_SECS: u64 = 10;

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("backend", &self.backend)
            .field("keys", &self.local.len())
            .finish_non_exhaustive()
    }
}

// === impl Limit ===

impl Limit {
    /// Compiles a limit, or says which fields are wrong. `previous` (the running limit of
    /// that name) lends the limit itself when the definition is unchanged, else its local
    /// store and counters.
    pub fn compile(
        name: &str,
        raw: &RawRateLimit,
        previous: Option<&Arc<Self>>,
        redis: Option<&Arc<RedisStore>>,
        clock: &crate::clock::Clock,
    ) -> Result<Arc<Self>, Vec<FieldError>> {
        let fingerprint = crate::config::Fingerprint::of(&[raw]);
        let mut errors = Vec::new();
        let key = CountBy::parse(&raw.key).map_err(|m| FieldError::new("key", m));
        let plan = plan(raw.requests, raw.per, raw.burst, raw.quota.as_ref(), "");
        let tier = match &raw.tier {
            None => None,
            Some(t) => match t.strip_prefix("claim:").and_then(key::claim_path) {
                Some(p) => Some(p),
                None => {
                    errors.push(FieldError::new(
                        "tier",
                        format!("`{t}`: expected claim:PATH (an API key's plan is claim:plan)"),
                    ));
                    None
                }
            },
        };
        if raw.tier.is_none() && !raw.tiers.is_empty() {
            errors.push(FieldError::new(
                "tiers",
                "tiers need `tier: claim:PATH` to choose one",
            ));
        }
        let mut tiers = Vec::with_capacity(raw.tiers.len());
        for (tier_name, t) in &raw.tiers {
            match self::plan(
                t.requests,
                t.per,
                t.burst,
                t.quota.as_ref(),
                &format!("tiers.{tier_name}."),
            ) {
                Ok(p) => tiers.push((Box::<str>::from(tier_name.as_str()), p)),
                Err(e) => errors.extend(e),
            }
        }
        let backend = match (raw.backend, redis) {
            (RawBackend::Local, _) => Backend::Local,
            (RawBackend::Redis, Some(r)) => Backend::Redis(Arc::clone(r)),
            (RawBackend::Redis, None) => {
                errors.push(FieldError::new(
                    "backend",
                    "`redis` needs a valid top-level `redis:` section (url, password…)",
                ));
                Backend::Local
            }
        };
        if raw.backend == RawBackend::Local && raw.on_redis_failure != RawRedisFailure::Local {
            errors.push(FieldError::new(
                "on_redis_failure",
                "applies to `backend: redis` only",
            ));
        }
        let shadow_header = match &raw.shadow_header {
            None => None,
            Some(h) => match HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()) {
                Ok(h) if raw.shadow => Some(h),
                Ok(_) => {
                    errors.push(FieldError::new(
                        "shadow_header",
                        "applies with `shadow: true` only",
                    ));
                    None
                }
                Err(_) => {
                    errors.push(FieldError::new(
                        "shadow_header",
                        format!("`{h}` is not a header name"),
                    ));
                    None
                }
            },
        };
        if raw.max_keys == 0 {
            errors.push(FieldError::new("max_keys", "must be at least 1"));
        }
        // Why: Redis counts in microseconds; a faster rate would round to no limit at all.
        let too_fast =
            |p: &Plan| p.rate.interval < 1_000 || p.quota.is_some_and(|q| q.interval < 1_000);
        if raw.backend == RawBackend::Redis
            && (plan.as_ref().is_ok_and(too_fast) || tiers.iter().any(|(_, p)| too_fast(p)))
        {
            errors.push(FieldError::new(
                "per",
                "more than one request a microsecond: a redis limit counts in microseconds",
            ));
        }
        let (key, plan) = match (key, plan) {
            (Ok(k), Ok(p)) if errors.is_empty() => (k, p),
            (k, p) => {
                errors.extend(k.err());
                errors.extend(p.err().into_iter().flatten());
                return Err(errors);
            }
        };
        // Same definition, same redis store: the running limit as it is.
        if let Some(p) =
            previous.filter(|p| p.fingerprint == fingerprint && p.same_backend(&backend))
        {
            return Ok(Arc::clone(p));
        }
        let local = match previous {
            Some(p) => {
                p.local.set_max_keys(raw.max_keys);
                Arc::clone(&p.local)
            }
            None => LocalStore::new(raw.max_keys, clock.clone()),
        };
        Ok(Arc::new(Self {
            name: name.into(),
            fingerprint,
            key,
            plan,
            tier,
            tiers: tiers.into(),
            backend,
            on_failure: raw.on_redis_failure,
            local,
            shadow: raw.shadow,
            headers: raw.headers && !raw.shadow,
            shadow_header,
            count: raw.count,
            counters: previous
                .map(|p| Arc::clone(&p.counters))
                .unwrap_or_default(),
            attempts: previous
                .map(|p| Arc::clone(&p.attempts))
                .unwrap_or_default(),
        }))
    }

    fn same_backend(&self, other: &Backend) -> bool {
        match (&self.backend, other) {
            (Backend::Local, Backend::Local) => true,
            (Backend::Redis(a), Backend::Redis(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// The plan for `principal`: its tier's, or the limit's own.
    fn plan_for(&self, principal: Option<&Principal>) -> &Plan {
        if let (Some(path), Some(p)) = (&self.tier, principal)
            && let Some(serde_json::Value::String(t)) = lookup(&p.claims, path)
            && let Some((_, plan)) = self.tiers.iter().find(|(name, _)| **name == **t)
        {
            return plan;
        }
        &self.plan
    }

    /// What it allows, as `explain` shows it: `30 per 1m (burst 10), 1000 per 1d, by
    /// principal`, then tiers, where it counts, and what.
    pub fn summary(&self) -> String {
        let mut out = plan_text(&self.plan);
        out.push_str(", by ");
        out.push_str(&key_text(&self.key));
        if let Some(path) = &self.tier {
            for (name, plan) in &*self.tiers {
                out.push_str(&format!("; tier `{name}` (claim {}): ", path.join(".")));
                out.push_str(&plan_text(plan));
            }
        }
        if self.is_redis() {
            out.push_str("; shared in Redis");
        }
        if self.count == RawCount::Failures {
            out.push_str("; counts refusals");
        }
        if self.shadow {
            out.push_str("; shadow mode: never refuses");
        }
        out
    }

    /// Whether its budgets are in Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }

    /// A guard's attempt failed: the request it spent stays spent, counted as `allowed` (what
    /// the guard let through to be checked).
    pub fn failed(&self, door: Door) {
        self.counters.allowed[door.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// A guard's spend for one attempt: [`Self::check`] with [`Mode::Spend`], except that a
    /// refusal while attempts of the same key are being checked here waits for them and asks
    /// again ([`attempts`]). Allowed, it also returns the attempt, to settle once decided.
    pub async fn attempt(
        &self,
        facts: &RequestFacts<'_>,
        rule: &str,
    ) -> (Checked, Option<attempts::Attempt<'_>>) {
        let key = {
            let mut h = self.local.key_hasher();
            self.key.write(&mut h, facts, None, rule);
            h.finish()
        };
        let until = tokio::time::Instant::now() + attempts::Attempts::wait_bound(facts.deadline);
        let mut first = true;
        // Why counted once it stands: counted at each refused try and taken back when a
        // retry followed, the exported counter went down between the two (a scrape read
        // that as a counter reset).
        let limited = |t| {
            self.counters.limited[facts.conn.door.index()].fetch_add(1, Ordering::Relaxed);
            (Checked::Limited(t), None)
        };
        loop {
            let mut attempt = self.attempts.begin(key, first);
            match self
                .check_counting(facts, None, rule, Mode::Spend, false)
                .await
            {
                Checked::Allowed(room) => {
                    attempt.allowed();
                    return (Checked::Allowed(room), Some(attempt));
                }
                Checked::Limited(t) => {
                    let Some(wake) = attempt.refused() else {
                        return limited(t);
                    };
                    if tokio::time::timeout_at(until, wake).await != Ok(attempts::Woken::Retry) {
                        return limited(t);
                    }
                    // A request was given back to it: not a refusal after all, it asks again.
                    first = false;
                }
                checked => return (checked, None),
            }
        }
    }

    /// Counts one request (with [`Mode::Peek`] only looks, but for a Redis budget stored past
    /// its limit's reach, which is written back clamped; with [`Mode::Refund`] gives one back).
    pub async fn check(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        rule: &str,
        mode: Mode,
    ) -> Checked {
        self.check_counting(facts, principal, rule, mode, true)
            .await
    }

    /// [`Self::check`]; a refusal counted in `limited` only with `count_limited` (a guard's
    /// attempt counts it once it stands).
    async fn check_counting(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        rule: &str,
        mode: Mode,
        count_limited: bool,
    ) -> Checked {
        let plan = self.plan_for(principal);
        let result = match &self.backend {
            Backend::Local => self
                .check_local(facts, principal, rule, plan, mode)
                .map(Some),
            Backend::Redis(store) => {
                let mut key = String::with_capacity(store.prefix().len() + self.name.len() + 33);
                key.push_str(store.prefix());
                key.push_str(&self.name);
                key.push(':');
                let mut h = Sha256::default();
                self.key.write(&mut h, facts, principal, rule);
                h.finish_hex(&mut key);
                match Box::pin(store.check(&key, plan, mode, facts.deadline)).await {
                    Ok(r) => r.map(Some),
                    Err(e) => {
                        // Allow, Deny, Local: the order of `fallback` and of its labels.
                        let slot = self.on_failure as usize;
                        if let Some(c) = self.counters.fallback.get(slot) {
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        self.warn_now_and_then(e);
                        match self.on_failure {
                            RawRedisFailure::Allow => Ok(None),
                            RawRedisFailure::Local => self
                                .check_local(facts, principal, rule, plan, mode)
                                .map(Some),
                            RawRedisFailure::Deny if self.shadow => {
                                self.counters.shadow_limited[facts.conn.door.index()]
                                    .fetch_add(1, Ordering::Relaxed);
                                return Checked::ShadowLimited;
                            }
                            RawRedisFailure::Deny => return Checked::Unavailable,
                        }
                    }
                }
            }
        };
        match result {
            Ok(room) => {
                // A guard's spend is an attempt, counted once it failed ([`Self::failed`]).
                if mode == Mode::Spend && self.count != RawCount::Failures {
                    self.counters.allowed[facts.conn.door.index()].fetch_add(1, Ordering::Relaxed);
                }
                Checked::Allowed(room)
            }
            Err(_) if self.shadow => {
                self.counters.shadow_limited[facts.conn.door.index()]
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    limit = &*self.name,
                    rule,
                    "Over a shadow-mode rate limit; let through"
                );
                Checked::ShadowLimited
            }
            Err(wait) => {
                if count_limited {
                    self.counters.limited[facts.conn.door.index()].fetch_add(1, Ordering::Relaxed);
                }
                Checked::Limited(throttle(wait))
            }
        }
    }

    fn check_local(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        rule: &str,
        plan: &Plan,
        mode: Mode,
    ) -> Result<Room, Wait> {
        let mut h = self.local.key_hasher();
        self.key.write(&mut h, facts, principal, rule);
        self.local.check(h.finish(), plan, mode)
    }

    /// A Redis failure, in the log at most once per interval per limit.
    fn warn_now_and_then(&self, e: redis::RedisError) {
        let now = crate::clock::Clock::system().unix_secs();
        let last = self.counters.last_warned.load(Ordering::Relaxed);
        if now >= last + WARN_EVERY_SECS
            && self
                .counters
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let mode = match self.on_failure {
                RawRedisFailure::Allow => "allow",
                RawRedisFailure::Deny => "deny",
                RawRedisFailure::Local => "local",
            };
            tracing::warn!(
                limit = &*self.name,
                error = %e,
                on_redis_failure = mode,
                "Rate limit cannot ask Redis; its failure mode decides (logged once per 10 s)"
            );
        }
    }

    /// Keys with local state now.
    pub fn keys(&self) -> usize {
        self.local.len()
    }

    /// Drops the local state of keys back at a full budget.
    pub fn housekeep(&self) {
        self.local.housekeep();
    }
}

/// A plan from a definition's fields; errors under `prefix`.
fn plan(
    requests: u32,
    per: std::time::Duration,
    burst: Option<u32>,
    quota: Option<&crate::config::raw::RawQuota>,
    prefix: &str,
) -> Result<Plan, Vec<FieldError>> {
    let mut errors = Vec::new();
    let rate = Rate::new(requests, per, burst)
        .map_err(|(field, m)| errors.push(FieldError::new(format!("{prefix}{field}"), m)))
        .ok();
    let quota = quota.and_then(|q| {
        Rate::new(q.requests, q.per, None)
            .map_err(|(field, m)| errors.push(FieldError::new(format!("{prefix}quota.{field}"), m)))
            .ok()
    });
    match rate {
        Some(rate) if errors.is_empty() => Ok(Plan { rate, quota }),
        _ => Err(errors),
    }
}

/// What the client is told about a wait.
fn throttle(wait: Wait) -> Throttle {
    let secs = wait.nanos / 1_000_000_000 + u64::from(!wait.nanos.is_multiple_of(1_000_000_000));
    Throttle {
        limit: wait.requests,
        retry_after: secs.max(1),
    }
}

/// Every limit of a snapshot, by name.
#[derive(Debug, Default)]
pub struct RateLimits {
    limits: Vec<Arc<Limit>>,
}

impl RateLimits {
    /// The compiled limits, in name order.
    pub fn new(limits: Vec<Arc<Limit>>) -> Self {
        Self { limits }
    }

    /// The limit of that name.
    pub fn get(&self, name: &str) -> Option<&Arc<Limit>> {
        self.limits.iter().find(|l| &*l.name == name)
    }

    /// Every limit.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Limit>> {
        self.limits.iter()
    }

    /// Starts the housekeeping task of each local store and the Redis connection (once
    /// each).
    pub fn start(&self) {
        for limit in &self.limits {
            limit.local.start();
            if let Backend::Redis(r) = &limit.backend {
                r.start();
            }
        }
    }
}

/// A plan as its config says it: `30 per 1m (burst 10)`, and the quota (`1000 per 1d`).
fn plan_text(plan: &Plan) -> String {
    let per = |r: &Rate| humantime::format_duration(r.per).to_string();
    let mut out = format!(
        "{} per {} (burst {})",
        plan.rate.requests,
        per(&plan.rate),
        plan.rate.burst
    );
    if let Some(q) = &plan.quota {
        out.push_str(&format!(", {} per {}", q.requests, per(q)));
    }
    out
}

/// What a limit counts by, as `key:` says it.
fn key_text(key: &CountBy) -> String {
    match key {
        CountBy::Principal => "principal".into(),
        CountBy::ApiKey => "api_key".into(),
        CountBy::ClientIp => "client_ip".into(),
        CountBy::Route => "route".into(),
        CountBy::Header(h) => format!("header:{h}"),
        CountBy::Claim(path) => format!("claim:{}", path.join(".")),
    }
}

#[cfg(test)]
mod tests;
