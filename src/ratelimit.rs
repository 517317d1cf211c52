//! Rate limits: named GCRA limits (governor), one budget per value of the limit's key,
//! checked in the decision core on the requests a rule allows, so every door counts alike.
//!
//! A key is a seeded 64-bit hash of what is counted (a principal, an address, a header…),
//! tagged by its kind so that a principal named like an address never shares its budget. The
//! per-key state is a few words; keys idle long enough to be back at a full burst are dropped
//! by a housekeeping task, so memory follows the active keys, not every key ever seen. A
//! reload that keeps a limit's definition keeps its state: editing a policy does not hand
//! every client a fresh burst.

use crate::config::FieldError;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::Clock as _;

use crate::clock::Clock;
use governor::{Quota, RateLimiter};
use http::HeaderName;

use crate::authn::principal::{Principal, lookup};
use crate::config::raw::RawRateLimit;
use crate::request::RequestFacts;

type Limiter = RateLimiter<
    u64,
    governor::state::keyed::DashMapStateStore<u64, foldhash::fast::RandomState>,
    Clock,
    governor::middleware::NoOpMiddleware<governor::nanos::Nanos>,
>;

/// One named limit.
pub struct Limit {
    /// Its name in `rate_limits`.
    pub name: Arc<str>,
    /// The definition as written: a reload that leaves it alone keeps the counts.
    fingerprint: crate::config::Fingerprint,
    requests: u32,
    key: CountBy,
    limiter: Limiter,
    hasher: foldhash::fast::RandomState,
    housekeeping: AtomicBool,
}

/// What a limit counts separately.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CountBy {
    Principal,
    ApiKey,
    ClientIp,
    Route,
    Header(HeaderName),
    Claim(Box<[Box<str>]>),
}

/// A request over its limit: what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// The limit's `requests` (`RateLimit-Limit`).
    pub limit: u32,
    /// Seconds until a request would pass (`Retry-After`, `RateLimit-Reset`), at least 1.
    pub retry_after: u64,
}

impl std::fmt::Debug for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("keys", &self.limiter.len())
            .finish_non_exhaustive()
    }
}

impl Limit {
    /// Compiles a limit, or says which field is wrong. `previous` lends its state when the
    /// definition is unchanged.
    pub fn compile(
        name: &str,
        raw: &RawRateLimit,
        previous: Option<&Arc<Self>>,
        clock: &Clock,
    ) -> Result<Arc<Self>, FieldError> {
        let fingerprint = crate::config::Fingerprint::of(&[raw]);
        if let Some(p) = previous.filter(|p| p.fingerprint == fingerprint) {
            return Ok(Arc::clone(p));
        }
        let key = parse_key(&raw.key).map_err(|m| FieldError::new("key", m))?;
        let requests = NonZeroU32::new(raw.requests)
            .ok_or(FieldError::new("requests", "must be at least 1"))?;
        let burst = match raw.burst {
            None => requests,
            Some(b) => NonZeroU32::new(b).ok_or(FieldError::new("burst", "must be at least 1"))?,
        };
        let period = raw
            .per
            .checked_div(requests.get())
            .filter(|p| !p.is_zero())
            .ok_or(FieldError::new(
                "per",
                format!(
                    "{} requests per {} is more than one a nanosecond",
                    raw.requests,
                    humantime::format_duration(raw.per)
                ),
            ))?;
        let quota = Quota::with_period(period)
            .ok_or(FieldError::new("per", "must be longer than zero"))?
            .allow_burst(burst);
        Ok(Arc::new(Self {
            name: name.into(),
            fingerprint,
            requests: raw.requests,
            key,
            limiter: RateLimiter::dashmap_with_clock_and_hasher(
                quota,
                clock.clone(),
                foldhash::fast::RandomState::default(),
            ),
            hasher: foldhash::fast::RandomState::default(),
            housekeeping: AtomicBool::new(false),
        }))
    }

    /// Counts one request; `Err` when it is over the limit.
    pub fn check(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        rule: &str,
    ) -> Result<(), Throttle> {
        let key = self.key_of(facts, principal, rule);
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            Throttle {
                limit: self.requests,
                retry_after: (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1),
            }
        })
    }

    /// Drops the state of keys back at a full burst (they would start there anyway).
    pub fn housekeep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    /// Keys with state now.
    pub fn keys(&self) -> usize {
        self.limiter.len()
    }

    fn key_of(&self, facts: &RequestFacts<'_>, principal: Option<&Principal>, rule: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        let by_ip = |h: &mut foldhash::fast::FoldHasher, ip: IpAddr| {
            0u8.hash(h);
            match ip {
                IpAddr::V4(v4) => v4.hash(h),
                // One site (a /64) holds more addresses than anyone could track: counting each
                // would hand a single client endless budgets and unbounded state.
                IpAddr::V6(v6) => (u128::from(v6) >> 64).hash(h),
            }
        };
        match (&self.key, principal) {
            (CountBy::ClientIp, _) => by_ip(&mut h, facts.client_ip),
            (CountBy::Route, _) => {
                1u8.hash(&mut h);
                rule.hash(&mut h);
            }
            (CountBy::ApiKey, Some(p)) if p.api_key_id.is_some() => {
                2u8.hash(&mut h);
                p.authenticator.hash(&mut h);
                p.api_key_id.hash(&mut h);
            }
            (CountBy::Principal | CountBy::ApiKey, Some(p)) => {
                3u8.hash(&mut h);
                p.authenticator.hash(&mut h);
                p.id.hash(&mut h);
            }
            // A header is believed only from a trusted proxy: a client choosing a new value
            // per request would get a new budget each time.
            (CountBy::Header(name), _) => {
                match facts.headers.get(name).filter(|_| facts.peer_trusted) {
                    Some(v) => {
                        4u8.hash(&mut h);
                        v.as_bytes().hash(&mut h);
                    }
                    None => by_ip(&mut h, facts.client_ip),
                }
            }
            (CountBy::Claim(path), Some(p)) => match lookup(&p.claims, path) {
                Some(serde_json::Value::String(s)) => {
                    5u8.hash(&mut h);
                    s.hash(&mut h);
                }
                // Another JSON value: its text, written straight into the hash (no allocation
                // per request), under its own tag so that `42` and `"42"` are two budgets.
                Some(v) => {
                    6u8.hash(&mut h);
                    let _ = write!(HashWriter(&mut h), "{v}");
                }
                None => by_ip(&mut h, facts.client_ip),
            },
            (CountBy::Principal | CountBy::ApiKey | CountBy::Claim(_), None) => {
                by_ip(&mut h, facts.client_ip);
            }
        }
        h.finish()
    }
}

/// Feeds formatted text into a hasher.
struct HashWriter<'a, H>(&'a mut H);

impl<H: Hasher> std::fmt::Write for HashWriter<'_, H> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

fn parse_key(s: &str) -> Result<CountBy, String> {
    match s {
        "principal" => Ok(CountBy::Principal),
        "api_key" => Ok(CountBy::ApiKey),
        "client_ip" => Ok(CountBy::ClientIp),
        "route" => Ok(CountBy::Route),
        _ => {
            if let Some(name) = s.strip_prefix("header:") {
                let name = name.trim();
                HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                    .map(CountBy::Header)
                    .map_err(|_| format!("`{name}` is not a header name"))
            } else if let Some(path) = s.strip_prefix("claim:") {
                let path: Box<[Box<str>]> = path.trim().split('.').map(Into::into).collect();
                if path.iter().any(|p| p.is_empty()) {
                    Err(format!("`{s}`: a claim path is dot-separated names"))
                } else {
                    Ok(CountBy::Claim(path))
                }
            } else {
                Err(format!(
                    "`{s}`: one of principal, api_key, client_ip, route, header:NAME, claim:PATH"
                ))
            }
        }
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

    /// Starts the housekeeping task (once per limit): it ends when the limit is dropped.
    pub fn start(&self) {
        for limit in &self.limits {
            if limit.housekeeping.swap(true, Ordering::Relaxed) {
                // Carried over from the previous snapshot: its task is running.
                continue;
            }
            let weak: Weak<Limit> = Arc::downgrade(limit);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HOUSEKEEPING);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(l) => l.housekeep(),
                        None => return,
                    }
                }
            });
        }
    }
}

/// How often idle keys are dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(key: &str, requests: u32, per: Duration, burst: Option<u32>) -> RawRateLimit {
        RawRateLimit {
            key: key.into(),
            requests,
            per,
            burst,
        }
    }

    #[test]
    fn refuses_bad_definitions_by_field() {
        let s = Duration::from_secs(1);
        let cases = [
            (raw("everyone", 1, s, None), "key"),
            (raw("header:bad name", 1, s, None), "key"),
            (raw("claim:a..b", 1, s, None), "key"),
            (raw("route", 0, s, None), "requests"),
            (raw("route", 1, s, Some(0)), "burst"),
            (raw("route", 1, Duration::ZERO, None), "per"),
            (raw("route", 10, Duration::from_nanos(5), None), "per"),
        ];
        for (def, field) in cases {
            let got = Limit::compile("l", &def, None, &crate::clock::Clock::system())
                .err()
                .map(|e| e.field);
            assert_eq!(got.as_deref(), Some(field), "{def:?}");
        }
    }

    #[test]
    fn claim_keys_tell_json_types_apart() {
        let limit = Limit::compile(
            "l",
            &raw("claim:n", 1, Duration::from_secs(60), None),
            None,
            &crate::clock::Clock::system(),
        )
        .unwrap();
        let (parts, ()) = http::Request::get("/")
            .header("host", "a.test")
            .body(())
            .unwrap()
            .into_parts();
        let conn =
            crate::request::facts::ConnInfo::new("192.0.2.1:1".parse().unwrap(), "l".into(), None);
        let facts = RequestFacts::from_parts(&parts, &conn, &[]).unwrap();
        let with = |n: serde_json::Value| Principal {
            id: "p".into(),
            kind: crate::authn::principal::PrincipalKind::User,
            authenticator: "a".into(),
            issuer: None,
            scopes: Box::default(),
            roles: Box::default(),
            tenant: None,
            api_key_id: None,
            claims: serde_json::json!({ "n": n }).as_object().unwrap().clone(),
            expires_at: None,
            derived: Default::default(),
        };
        let key = |n| limit.key_of(&facts, Some(&with(n)), "r");
        assert_eq!(key(serde_json::json!(42)), key(serde_json::json!(42)));
        assert_ne!(key(serde_json::json!(42)), key(serde_json::json!("42")));
        assert_ne!(key(serde_json::json!(42)), key(serde_json::json!(43)));
        // Each claim value is its own budget: the second request of one value is refused.
        assert!(
            limit
                .check(&facts, Some(&with(serde_json::json!(42))), "r")
                .is_ok()
        );
        assert!(
            limit
                .check(&facts, Some(&with(serde_json::json!("42"))), "r")
                .is_ok()
        );
        assert!(
            limit
                .check(&facts, Some(&with(serde_json::json!(42))), "r")
                .is_err()
        );
    }

    #[test]
    fn unchanged_definition_keeps_its_state() {
        let def = raw("route", 5, Duration::from_secs(60), Some(2));
        let a = Limit::compile("l", &def, None, &crate::clock::Clock::system()).unwrap();
        let b = Limit::compile("l", &def, Some(&a), &crate::clock::Clock::system()).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let changed = raw("route", 6, Duration::from_secs(60), Some(2));
        let c = Limit::compile("l", &changed, Some(&a), &crate::clock::Clock::system()).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
