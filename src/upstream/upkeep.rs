//! An upstream's background upkeep, one task per upstream: active health checks, DNS
//! re-resolution of endpoint names, and the retry budget's window.
//!
//! The task holds the upstream's [`Balancer`] weakly: once no snapshot names the upstream (a
//! reload changed or removed it), the task ends at its next tick.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{HeaderValue, Request, Uri};
use tokio::time::Instant;

use super::balance::{Balancer, Endpoint};
use super::pool::Addr;
use crate::body::RequestBody;

/// The retry budget's window.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Longest wait for one name's resolution.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One configured endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Spec {
    /// A fixed address.
    Ip(SocketAddr),
    /// `name:port`, resolved again every `dns_refresh`.
    Name(Arc<str>),
}

/// Active health check settings.
#[derive(Debug, Clone)]
pub(super) struct HealthCheck {
    pub(super) path: Uri,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) healthy_threshold: u32,
    pub(super) unhealthy_threshold: u32,
}

/// What the upkeep task needs.
pub(super) struct Upkeep {
    pub(super) name: Arc<str>,
    pub(super) specs: Vec<Spec>,
    pub(super) dns_refresh: Duration,
    pub(super) health: Option<HealthCheck>,
    /// `Host` of the health checks.
    pub(super) host: HeaderValue,
    pub(super) connect_timeout: Duration,
}

/// Starts the upkeep of `balancer`, when there is a runtime to run it on (`portcullis check`
/// compiles without one, and needs none).
pub(super) fn spawn(balancer: &Arc<Balancer>, upkeep: Upkeep) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(run(Arc::downgrade(balancer), upkeep));
    }
}

async fn run(weak: Weak<Balancer>, u: Upkeep) {
    let has_names = u.specs.iter().any(|s| matches!(s, Spec::Name(_)));
    let tick = [
        Some(Duration::from_secs(1)),
        u.health.as_ref().map(|h| h.interval),
        has_names.then_some(u.dns_refresh),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(Duration::from_secs(1))
    .max(Duration::from_millis(10));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let start = Instant::now();
    let (mut next_dns, mut next_health, mut next_roll) = (start, start, start + BUDGET_WINDOW);
    let mut unresolved = Streaks::default();
    loop {
        interval.tick().await;
        let Some(b) = weak.upgrade() else {
            return;
        };
        let now = Instant::now();
        for ep in b.endpoints.load().iter() {
            ep.pool.prune();
        }
        if now >= next_roll {
            b.budget.roll();
            next_roll = next_due(next_roll, BUDGET_WINDOW, Instant::now());
        }
        if has_names && now >= next_dns {
            resolve(&b, &u, &mut unresolved).await;
            next_dns = next_due(next_dns, u.dns_refresh, Instant::now());
        }
        if let Some(h) = &u.health
            && now >= next_health
        {
            check_all(&b, h, &u).await;
            next_health = next_due(next_health, h.interval, Instant::now());
        }
    }
}

/// When a task due at `due` and run every `every` is next due, `now` being after its run:
/// counted from when it was due, not from when its run ended.
///
/// Why: counted from the end of the run, the next time fell just after the tick that should
/// have run it, so a `1s` health check ran every 2 s and a `3s` one every 4 s (the tick is
/// the shortest period), and a sick endpoint left rotation late.
/// Regression: tests::runs_are_counted_from_when_they_were_due
fn next_due(due: Instant, every: Duration, now: Instant) -> Instant {
    // A run that took longer than its period is not followed by a burst of catching up.
    (due + every).max(now)
}

/// Resolves every endpoint name; an address that stays keeps its endpoint, a name that fails
/// to resolve keeps its last addresses, and one that never resolved is out of rotation.
/// Endpoint names failing to resolve, by their place in `endpoints`: a failure is told once
/// per streak.
///
/// Why: a name that never resolved was warned about at every refresh (13 times in 26 s at
/// `dns_refresh: 2s`), burying the other warnings. Regression: tests::a_failure_streak_is_told_once
#[derive(Debug, Default)]
struct Streaks(std::collections::HashSet<usize>);

impl Streaks {
    /// Records a failure of name `i`: whether it starts a streak (to be told).
    fn failed(&mut self, i: usize) -> bool {
        self.0.insert(i)
    }

    /// Records a success of name `i`: whether it ends a streak.
    fn passed(&mut self, i: usize) -> bool {
        self.0.remove(&i)
    }
}

async fn resolve(b: &Balancer, u: &Upkeep, unresolved: &mut Streaks) {
    let current = b.endpoints.load_full();
    let mut next: Vec<Arc<Endpoint>> = Vec::with_capacity(current.len());
    let fixed: std::collections::HashSet<SocketAddr> = u
        .specs
        .iter()
        .filter_map(|s| match s {
            Spec::Ip(a) => Some(*a),
            Spec::Name(_) => None,
        })
        .collect();
    for (i, spec) in u.specs.iter().enumerate() {
        let kept = current.iter().filter(|e| e.source == i).cloned();
        let Spec::Name(name) = spec else {
            next.extend(kept);
            continue;
        };
        let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(&**name)).await;
        // What a failure leaves: the name's last addresses, or (never resolved) nothing.
        let left = if kept.clone().any(|e| matches!(e.addr, Addr::Ip(_))) {
            "keeping its last addresses"
        } else {
            "out of rotation until it resolves"
        };
        let failure = match &found {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("timed out".to_owned()),
        };
        match failure {
            Some(error) if unresolved.failed(i) => {
                tracing::warn!(
                    upstream = &*u.name,
                    endpoint = &**name,
                    error,
                    "Endpoint name did not resolve; {left}"
                );
            }
            Some(error) => {
                tracing::debug!(
                    upstream = &*u.name,
                    endpoint = &**name,
                    error,
                    "Endpoint name still does not resolve"
                );
            }
            None if unresolved.passed(i) => {
                tracing::info!(
                    upstream = &*u.name,
                    endpoint = &**name,
                    "Endpoint name resolves again"
                );
            }
            None => {}
        }
        let mut addrs: Vec<SocketAddr> = match found {
            Ok(Ok(addrs)) => addrs.collect(),
            _ => Vec::new(),
        };
        distinct(&mut addrs);
        if addrs.is_empty() {
            // Why: a name that has never resolved is an endpoint nobody can reach; in rotation,
            // it cost a failed lookup and a retry elsewhere for each of its turns until
            // passive ejection took it out, and again after each back-off. Out of rotation
            // (as unhealthy) until it resolves, when its addresses replace it, in rotation.
            // Regression: tests (it) upstreams::unresolvable_endpoint_name_is_out_of_rotation
            for e in kept {
                if matches!(e.addr, Addr::Name(_)) {
                    e.healthy.store(false, Ordering::Relaxed);
                }
                next.push(e);
            }
            continue;
        }
        for a in addrs {
            let addr = Addr::Ip(a);
            // Why: a name resolving to an address also listed (`localhost:8080` beside
            // `127.0.0.1:8080`), or to one an earlier name gave, made two endpoints of it:
            // twice its share, and two copies of its metric series under the same labels.
            // Regression: tests (it) upstreams::a_name_resolving_to_a_listed_address_adds_no_endpoint
            if fixed.contains(&a) || next.iter().any(|e| e.addr == addr) {
                continue;
            }
            match current.iter().find(|e| e.source == i && e.addr == addr) {
                Some(e) => next.push(Arc::clone(e)),
                None => {
                    let pool = b.template.pool(addr.clone());
                    next.push(Arc::new(Endpoint::new(addr, i, pool).resolved_from(name)));
                }
            }
        }
    }
    let same = next.len() == current.len()
        && next
            .iter()
            .zip(current.iter())
            .all(|(a, b)| Arc::ptr_eq(a, b));
    if !same {
        tracing::info!(
            upstream = &*u.name,
            endpoints = next.len(),
            "Upstream endpoints re-resolved"
        );
        b.endpoints.store(Arc::new(next));
    }
}

/// Keeps the first of each address, in order.
///
/// Why: a resolver may list an address twice, not side by side (`/etc/hosts` with the same
/// line twice gave [.2, .3, .2]): two endpoints for one address took twice its share, and
/// its metrics series appeared twice.
/// Regression: tests::an_address_listed_twice_is_one_endpoint
fn distinct(addrs: &mut Vec<SocketAddr>) {
    let mut seen = std::collections::HashSet::with_capacity(addrs.len());
    addrs.retain(|a| seen.insert(*a));
}

/// Checks every endpoint at once and applies the thresholds.
async fn check_all(b: &Balancer, h: &HealthCheck, u: &Upkeep) {
    let eps = b.endpoints.load_full();
    let mut checks = tokio::task::JoinSet::new();
    for (i, ep) in eps.iter().enumerate() {
        let ep = Arc::clone(ep);
        let req = Request::get(h.path.clone())
            .header(http::header::HOST, u.host.clone())
            .header(
                http::header::USER_AGENT,
                HeaderValue::from_static("portcullis-health-check"),
            )
            .body(RequestBody::empty());
        let (timeout, connect) = (h.timeout, u.connect_timeout.min(h.timeout));
        checks.spawn(async move {
            let Ok(req) = req else {
                return (i, Some(false));
            };
            // Why: a probe waited for a slot like a request, so an endpoint with its
            // `max_connections` busy failed its checks and left rotation. It does not wait:
            // finding every slot busy says nothing of the endpoint's health.
            // Regression: tests (it) upstreams::health_checks_skip_an_endpoint_at_its_connection_cap
            let now = tokio::time::Instant::now();
            // Why: a check sent over a pooled connection the endpoint had closed (its
            // keep-alive timer racing the interval) failed, and with `unhealthy_threshold: 1`
            // a healthy endpoint flapped out of rotation. It goes once more on a fresh
            // connection, as a request's GET does.
            // Regression: tests (it) upstreams::a_health_check_on_a_stale_connection_goes_again
            let sent = async {
                let failed = match ep.pool.send(req, connect, now, false).await {
                    Err(f) if !matches!(f.error, super::SendError::Busy) => f,
                    first => return first,
                };
                if super::unreachable_error(&failed.error) {
                    return Err(failed);
                }
                match failed.unsent.or(failed.repeat) {
                    Some(again) => ep.pool.send(*again, connect, now, true).await,
                    None => Err(super::pool::Failed {
                        error: failed.error,
                        unsent: None,
                        repeat: None,
                    }),
                }
            };
            let passed = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok(resp)) => Some(resp.status().is_success()),
                Ok(Err(f)) if matches!(f.error, super::SendError::Busy) => None,
                _ => Some(false),
            };
            (i, passed)
        });
    }
    while let Some(done) = checks.join_next().await {
        let Ok((i, Some(passed))) = done else {
            continue;
        };
        if let Some(ep) = eps.get(i) {
            apply(ep, passed, h, &u.name);
        }
    }
}

/// One check's result: a streak long enough flips the endpoint's health.
fn apply(ep: &Endpoint, passed: bool, h: &HealthCheck, upstream: &str) {
    let s = ep.streak.load(Ordering::Relaxed);
    let s = match (passed, s) {
        (true, s) if s < 0 => 1,
        (true, s) => s.saturating_add(1).min(1_000),
        (false, s) if s > 0 => -1,
        (false, s) => s.saturating_sub(1).max(-1_000),
    };
    ep.streak.store(s, Ordering::Relaxed);
    let healthy = ep.healthy.load(Ordering::Relaxed);
    if passed && !healthy && s.unsigned_abs() >= h.healthy_threshold {
        ep.healthy.store(true, Ordering::Relaxed);
        tracing::info!(upstream, endpoint = %ep.addr, "Upstream endpoint healthy again");
    } else if !passed && healthy && s.unsigned_abs() >= h.unhealthy_threshold {
        ep.healthy.store(false, Ordering::Relaxed);
        tracing::warn!(upstream, endpoint = %ep.addr, "Upstream endpoint failed its health checks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_listed_twice_is_one_endpoint() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mut addrs = vec![a("127.0.0.2:80"), a("127.0.0.3:80"), a("127.0.0.2:80")];
        distinct(&mut addrs);
        assert_eq!(addrs, [a("127.0.0.2:80"), a("127.0.0.3:80")]);
    }

    #[test]
    fn a_failure_streak_is_told_once() {
        let mut s = Streaks::default();
        assert!(s.failed(0), "a streak starts");
        assert!(!s.failed(0), "and goes on untold");
        assert!(s.failed(1), "another name's is its own");
        assert!(s.passed(0), "its end is told");
        assert!(!s.passed(0), "once");
        assert!(s.failed(0), "a new streak is told again");
    }

    #[test]
    fn runs_are_counted_from_when_they_were_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        // A run that ended 20 ms after it was due is next due a period after it was due.
        assert_eq!(next_due(t0, s, t0 + Duration::from_millis(20)), t0 + s);
        // One that overran its period is due at once, not for each period it missed.
        let late = t0 + Duration::from_millis(3500);
        assert_eq!(next_due(t0, s, late), late);
    }
}
