//! An upstream's endpoints and which one a request goes to: round robin, least request (power
//! of two choices) or consistent hashing (rendezvous), skipping endpoints that are ejected
//! (passive: failures in a row) or unhealthy (active checks, see [`super::health`]).
//!
//! Invariants:
//! - A pick never fails while there is an endpoint: if every endpoint is out of rotation, all
//!   of them are tried rather than none (an upstream-wide outage then shows as the upstream's
//!   own errors, not as a gateway-made one, and an endpoint that recovered is found at once).
//! - The endpoint set is swapped whole (DNS re-resolution); an address that stays keeps its
//!   endpoint, so its pool, its counters and its ejection survive.
//! - Nothing here takes a lock per request: atomics, and one `ArcSwap` load.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::pool::{Addr, Pool, Template};
use crate::config::raw::RawBalance;

/// The endpoints of one upstream and the state balancing them needs; shared by the snapshots
/// in which the upstream is unchanged.
pub(super) struct Balancer {
    /// The current endpoints, in config order (a name's addresses in resolver order).
    pub(super) endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Round-robin cursor.
    next: AtomicUsize,
    policy: RawBalance,
    pub(super) ejection: Ejection,
    pub(super) budget: RetryBudget,
    /// Retries sent, and retries the budget refused, since the balancer was built (metrics).
    pub(super) retried: AtomicU64,
    /// See `retried`.
    pub(super) retries_refused: AtomicU64,
    /// Time zero of the millisecond clocks below.
    pub(super) epoch: Instant,
    /// Builds the pool of a new address.
    pub(super) template: Template,
}

/// One address of an upstream.
pub(super) struct Endpoint {
    pub(super) addr: Addr,
    /// Which configured endpoint it came from.
    pub(super) source: usize,
    /// The configured name it is an address of, once resolved.
    pub(super) resolved_from: Option<Arc<str>>,
    pub(super) pool: Arc<Pool>,
    /// Stable across processes: the rendezvous-hash identity.
    id_hash: u64,
    /// Requests sent and not yet answered (least request).
    in_flight: AtomicU32,
    /// Failures in a row.
    failures: AtomicU32,
    /// Ejections in a row (the back-off doubles with each).
    ejections: AtomicU32,
    /// Out of rotation until this many milliseconds after the epoch.
    ejected_until: AtomicU64,
    /// Times ejected since it was added (metrics).
    pub(super) ejected_total: AtomicU64,
    /// The active checks' verdict (true without checks).
    pub(super) healthy: AtomicBool,
    /// Checks passed (positive) or failed (negative) in a row.
    pub(super) streak: AtomicI32,
}

/// Passive ejection settings.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ejection {
    /// `0`: never.
    pub(super) consecutive: u32,
    pub(super) base: Duration,
    pub(super) max: Duration,
}

/// Retries allowed: at most `percent` of the requests plus `minimum`, per window (rolled by
/// the upstream's maintenance task).
pub(super) struct RetryBudget {
    percent: u64,
    minimum: u64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// What an exchange tells about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Answered below 500.
    Success,
    /// Unreachable, broken or a 5xx.
    Failure,
    /// Says nothing about the endpoint (the client's body failed).
    Neutral,
}

// === impl Balancer ===

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("endpoints", &self.endpoints.load().len())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Balancer {
    pub(super) fn new(
        endpoints: Vec<Arc<Endpoint>>,
        policy: RawBalance,
        ejection: Ejection,
        budget: RetryBudget,
        template: Template,
    ) -> Self {
        Self {
            endpoints: ArcSwap::from_pointee(endpoints),
            next: AtomicUsize::new(0),
            policy,
            ejection,
            budget,
            retried: AtomicU64::new(0),
            retries_refused: AtomicU64::new(0),
            epoch: Instant::now(),
            template,
        }
    }

    /// Takes over what `previous` (the same upstream before a reload changed it) learnt of
    /// the endpoints both have at one address: the active checks' verdict and streak when
    /// this one checks too, an ejection under way (and its back-off) when this one ejects.
    ///
    /// Why: every endpoint of a rebuilt upstream started in rotation, so any edit to the
    /// upstream (a health check's timeout, a renewed CA file) sent requests to endpoints
    /// known to be dead until the checks found them again.
    /// Regression: tests (it) upstreams::a_reload_keeps_what_health_checks_learnt
    pub(super) fn inherit(&self, previous: &Self, checks: bool) {
        let (before, now) = (previous.now_ms(), self.now_ms());
        let old = previous.endpoints.load();
        for ep in self.endpoints.load().iter() {
            let Some(was) = old.iter().find(|o| o.addr == ep.addr) else {
                continue;
            };
            if checks {
                ep.healthy
                    .store(was.healthy.load(Ordering::Relaxed), Ordering::Relaxed);
                ep.streak
                    .store(was.streak.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            if self.ejection.consecutive > 0 {
                let until = was.ejected_until.load(Ordering::Relaxed);
                if until > before {
                    ep.ejected_until
                        .store(now.saturating_add(until - before), Ordering::Relaxed);
                }
                ep.ejections
                    .store(was.ejections.load(Ordering::Relaxed), Ordering::Relaxed);
                ep.failures
                    .store(was.failures.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            ep.ejected_total
                .store(was.ejected_total.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    /// Milliseconds since the epoch (at least 1, so 0 means "never").
    pub(super) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The endpoint for the next request; `key` is a consistent-hashing key. `None` only when
    /// there is no endpoint at all.
    pub(super) fn pick(&self, key: Option<u64>, avoid: Option<&Endpoint>) -> Option<Arc<Endpoint>> {
        let eps = self.endpoints.load();
        match eps.len() {
            0 => return None,
            // The usual single address: nothing to choose.
            1 => return eps.first().cloned(),
            _ => {}
        }
        let now = self.now_ms();
        let usable =
            |e: &Endpoint| e.is_available(now) && avoid.is_none_or(|a| !std::ptr::eq(a, e));
        // Why: a retry took a round-robin turn of its own (and the fallback below a third),
        // so with one endpoint of two dead, the cursor moved two per request and every first
        // attempt met the dead one. One turn per request: a retry reads the cursor without
        // moving it, and rotates over the endpoints other than the one that failed.
        // Regression: tests (it) upstreams::a_retry_takes_no_round_robin_turn
        let turn = match (key, self.policy, avoid) {
            (None, RawBalance::RoundRobin, None) => self.next.fetch_add(1, Ordering::Relaxed),
            (None, RawBalance::RoundRobin, Some(_)) => self.next.load(Ordering::Relaxed),
            _ => 0,
        };
        let choose = |usable: &dyn Fn(&Endpoint) -> bool| match (key, self.policy) {
            (Some(k), _) => rendezvous(&eps, k, usable),
            (None, RawBalance::RoundRobin) => round_robin(&eps, usable, turn),
            (None, RawBalance::LeastRequest) => least_request(&eps, usable),
        };
        // Every endpoint out of rotation: all of them, rather than none.
        choose(&usable).or_else(|| choose(&|e| avoid.is_none_or(|a| !std::ptr::eq(a, e))))
    }
}

/// Turn `turn` of a rotation over the endpoints `usable`.
fn round_robin(
    eps: &[Arc<Endpoint>],
    usable: &dyn Fn(&Endpoint) -> bool,
    turn: usize,
) -> Option<Arc<Endpoint>> {
    // Why: the first usable endpoint from the cursor on gave an ejected endpoint's turns
    // to the one after it: with one of three out, its successor took two requests in
    // three and the third endpoint one. The turn counts over the usable endpoints only.
    // Regression: tests (it) upstreams::stopped_endpoint_ejected_then_readmitted
    let usable_now = eps.iter().filter(|e| usable(e)).count();
    if usable_now == 0 {
        return None;
    }
    eps.iter()
        .filter(|e| usable(e))
        .nth(turn % usable_now)
        .cloned()
}

impl Balancer {
    /// Whether requests in flight are counted (only least request reads them).
    pub(super) fn counts_in_flight(&self) -> bool {
        self.policy == RawBalance::LeastRequest
    }

    /// Records what an exchange said about `ep`; may eject it.
    /// Returns the failure's place in its streak (1 for the first), 0 for anything else.
    pub(super) fn record(&self, ep: &Endpoint, verdict: Verdict, upstream: &str) -> u32 {
        match verdict {
            Verdict::Neutral => 0,
            Verdict::Success => {
                // Reads first: the common case writes nothing.
                if ep.failures.load(Ordering::Relaxed) != 0 {
                    ep.failures.store(0, Ordering::Relaxed);
                }
                if ep.ejections.load(Ordering::Relaxed) != 0 {
                    ep.ejections.store(0, Ordering::Relaxed);
                }
                0
            }
            Verdict::Failure => {
                let limit = self.ejection.consecutive;
                // Why: with every endpoint out, all are tried; each further streak of
                // failures then ejected the endpoint again, doubling its time: an outage of
                // 1.3 s under load made 41 ejections, and the endpoint read as down for the
                // whole `max_time` (5 min) after it came back. Failures while it is out
                // neither start a streak nor extend the ejection.
                // Regression: tests (it) upstreams::failures_while_ejected_do_not_extend_it
                if limit != 0 && ep.ejected_until.load(Ordering::Relaxed) > self.now_ms() {
                    return 0;
                }
                let failures = ep
                    .failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if limit == 0 || failures < limit {
                    return failures;
                }
                ep.failures.store(0, Ordering::Relaxed);
                let n = ep.ejections.fetch_add(1, Ordering::Relaxed);
                let factor = 1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX);
                let time = self
                    .ejection
                    .base
                    .saturating_mul(factor)
                    .min(self.ejection.max);
                let until = self
                    .now_ms()
                    .saturating_add(u64::try_from(time.as_millis()).unwrap_or(u64::MAX));
                ep.ejected_until.store(until, Ordering::Relaxed);
                ep.ejected_total.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(upstream, endpoint = %ep.addr, failures, ejected_for = ?time, "Upstream endpoint ejected");
                failures
            }
        }
    }
}

/// Rendezvous (highest random weight) hashing: the usable endpoint scoring highest for `key`.
fn rendezvous(
    eps: &[Arc<Endpoint>],
    key: u64,
    usable: &dyn Fn(&Endpoint) -> bool,
) -> Option<Arc<Endpoint>> {
    eps.iter()
        .filter(|e| usable(e))
        .max_by_key(|e| mix(key ^ e.id_hash))
        .cloned()
}

/// Power of two choices: of two endpoints picked at random, the one with fewer requests in
/// flight; a usable one over an unusable one.
fn least_request(
    eps: &[Arc<Endpoint>],
    usable: &dyn Fn(&Endpoint) -> bool,
) -> Option<Arc<Endpoint>> {
    let n = eps.len() as u64;
    let r = random();
    let a = eps.get(usize::try_from(r % n).unwrap_or(0))?;
    // A second index different from the first.
    let offset = 1 + (r >> 32) % (n - 1);
    let b = eps.get(usize::try_from(((r % n) + offset) % n).unwrap_or(0))?;
    let pick = match (usable(a), usable(b)) {
        (true, true) => {
            if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                b
            } else {
                a
            }
        }
        (true, false) => a,
        (false, true) => b,
        // Why at random: the first usable in config order took most of the load whenever
        // both picks were out of rotation (with 3 of 10 usable, 64%).
        // Regression: tests::least_request_spreads_when_most_are_out
        // Uniformly among the usable ones (a random start then the next usable would favour
        // an endpoint after a run of unusable ones).
        (false, false) => {
            let k = eps.iter().filter(|e| usable(e)).count() as u64;
            let nth = usize::try_from(random() % k.max(1)).unwrap_or(0);
            return eps.iter().filter(|e| usable(e)).nth(nth).cloned();
        }
    };
    Some(Arc::clone(pick))
}

/// A per-thread xorshift generator: enough to spread load, no lock, no syscall.
fn random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x9e37_79b9_7f4a_7c15);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// A 64-bit finaliser (splitmix64): spreads a key into a well-mixed score.
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a: a hash that is the same in every process, so gateways sharing a config send a key
/// to the same endpoint.
pub(super) fn stable_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

// === impl Endpoint ===

impl Endpoint {
    pub(super) fn new(addr: Addr, source: usize, pool: Arc<Pool>) -> Self {
        let id_hash = stable_hash(addr.to_string().as_bytes());
        Self {
            addr,
            source,
            resolved_from: None,
            pool,
            id_hash,
            in_flight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejected_total: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            streak: AtomicI32::new(0),
        }
    }

    /// The endpoint, as an address `name` resolved to.
    pub(super) fn resolved_from(mut self, name: &Arc<str>) -> Self {
        self.resolved_from = Some(Arc::clone(name));
        self
    }

    /// In rotation: healthy and not ejected.
    pub(super) fn is_available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.is_ejected(now_ms)
    }

    /// Out of rotation after failing (passive ejection).
    pub(super) fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Requests in flight (counted under least request only).
    pub(super) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request in flight on its endpoint (least request), until dropped: it goes with the
/// response's body, so a stream (server-sent events, a gRPC stream, a long download) counts
/// for as long as it streams.
pub(super) struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InFlight").field(&self.0.addr).finish()
    }
}

/// Counts a request in flight on `ep` until the token drops, if `counted` (least request).
pub(super) fn in_flight(ep: &Arc<Endpoint>, counted: bool) -> Option<InFlight> {
    counted.then(|| {
        ep.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(ep))
    })
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(a) => a.fmt(f),
            Self::Name(n) => f.write_str(n),
        }
    }
}

// === impl RetryBudget ===

impl RetryBudget {
    pub(super) fn new(percent: u32, minimum: u32) -> Self {
        Self {
            percent: u64::from(percent),
            minimum: u64::from(minimum),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    /// Counts a request (not a retry).
    pub(super) fn deposit(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if it allows one.
    pub(super) fn withdraw(&self) -> bool {
        let allowed = self.minimum + self.requests.load(Ordering::Relaxed) * self.percent / 100;
        self.retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                (r < allowed).then_some(r + 1)
            })
            .is_ok()
    }

    /// Starts a new window.
    pub(super) fn roll(&self) {
        self.requests.store(0, Ordering::Relaxed);
        self.retries.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_the_floor_then_a_share_of_requests() {
        let b = RetryBudget::new(20, 2);
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw(), "the floor is spent");
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw(), "20% of 10 requests is two more");
        b.roll();
        assert!(b.withdraw());
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
