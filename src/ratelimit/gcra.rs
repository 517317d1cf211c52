//! GCRA (the generic cell rate algorithm), the one definition both backends follow: the local
//! store runs it here, the Redis backend runs the same steps in its Lua script
//! ([`super::redis::SCRIPT`]), in microseconds of Redis's own clock.
//!
//! A key's state is its theoretical arrival time (TAT): when its budget would be whole again,
//! had it been spending at exactly the rate. A request is allowed when `now` is no earlier
//! than `TAT - tolerance` (tolerance = `interval × (burst − 1)`), and moves TAT one interval
//! on. The state also records the interval it was counted in, so that a changed rate (a
//! reload, another tier) rescales the debt instead of forgetting it: the requests already
//! spent stay spent, and tightening a limit never hands out a fresh burst.

use std::num::NonZeroU32;
use std::time::Duration;

/// One rate: `requests` per period, as an emission interval and a burst tolerance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// The configured `requests` (`RateLimit-Limit` is [`Rate::limit`]).
    pub requests: u32,
    /// Time per request, nanoseconds (at least 1; at least 1 µs in Redis, which counts in
    /// microseconds).
    pub interval: u64,
    /// `interval × (burst − 1)`, nanoseconds.
    pub tolerance: u64,
    /// The configured `per` (for `explain`).
    pub per: Duration,
    /// The configured `burst`, or its default, `requests` (for `explain`).
    pub burst: u32,
}

/// One rate's state for one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    /// Theoretical arrival time, in the clock's monotonic nanoseconds; 0: never seen.
    pub tat: u64,
    /// The interval `tat` was counted in.
    pub interval: u64,
}

/// A rate and, optionally, a long-window quota, spent together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The per-second (or minute, hour) rate.
    pub rate: Rate,
    /// The per-day (or month) quota.
    pub quota: Option<Rate>,
}

/// A key's state under a [`Plan`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// The rate's.
    pub rate: Cell,
    /// The quota's.
    pub quota: Cell,
}

/// A refusal: how long until a request would pass, and which of the plan's rates refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// Nanoseconds.
    pub nanos: u64,
    /// The refusing rate's [`Rate::limit`].
    pub requests: u32,
}

/// What is left after an allowed request: the `RateLimit-*` of its answer, for whichever of
/// the plan's rates has fewer requests left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// That rate's [`Rate::limit`] (`RateLimit-Limit`).
    pub requests: u32,
    /// Requests that would pass now, at once (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Nanoseconds until that rate's budget is whole again (`RateLimit-Reset`).
    pub reset: u64,
}

/// Whether a check spends the budget or only looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Spend one request when allowed.
    Spend,
    /// Only say whether one would be allowed.
    Peek,
    /// Give back one request spent before: a brute-force guard spends one per attempt
    /// before verifying, and gives it back when the attempt did not fail. Never past a full
    /// budget; always `Ok`.
    Refund,
}

/// How far ahead of now a TAT may run, nanoseconds (2^62: 146 years).
const HORIZON: u64 = 1 << 62;

// === impl Rate ===

impl Rate {
    /// `requests` per `per`, bursts of `burst`; `Err` names what is wrong.
    pub fn new(
        requests: u32,
        per: Duration,
        burst: Option<u32>,
    ) -> Result<Self, (&'static str, String)> {
        let requests_nz =
            NonZeroU32::new(requests).ok_or(("requests", "must be at least 1".to_owned()))?;
        let burst = match burst {
            None => requests_nz,
            Some(b) => NonZeroU32::new(b).ok_or(("burst", "must be at least 1".to_owned()))?,
        };
        if per.is_zero() {
            return Err(("per", "must be longer than zero".to_owned()));
        }
        let interval = u64::try_from(per.as_nanos() / u128::from(requests_nz.get()))
            .map_err(|_| ("per", "is too long".to_owned()))?;
        if interval == 0 {
            return Err((
                "per",
                format!(
                    "{requests} requests per {} is more than one a nanosecond",
                    humantime::format_duration(per)
                ),
            ));
        }
        // Why: TAT runs up to `now + tolerance + interval`, in u64 nanoseconds. `requests: 2,
        // per: 1000y` passed `check`, then overflowed on the second request (a panic in a
        // debug build, a wrapped TAT that refused nothing in release). A horizon of 2^62 ns
        // (146 years) keeps every sum in range. Regression: tests::rates_past_the_horizon_refused
        let tolerance = interval
            .checked_mul(u64::from(burst.get() - 1))
            .filter(|t| t.checked_add(interval).is_some_and(|h| h <= HORIZON))
            .ok_or((
                if burst.get() > 1 { "burst" } else { "per" },
                "is too large for the period: one request's interval times the burst must stay under 146 years".to_owned(),
            ))?;
        Ok(Self {
            requests,
            interval,
            tolerance,
            per,
            burst: burst.get(),
        })
    }

    /// `RateLimit-Limit`: the quota, `requests` per period, or a larger `burst` (the most
    /// `RateLimit-Remaining` can say).
    ///
    /// Why: with `requests: 2, burst: 4` a fresh client was told `RateLimit-Limit: 2` and
    /// `RateLimit-Remaining: 3`, more left than the limit. Regression: tests::limit_covers_the_burst
    pub fn limit(&self) -> u32 {
        self.requests.max(self.burst)
    }

    /// How many requests would pass at once with `debt` nanoseconds of TAT ahead of now.
    fn remaining(&self, debt: u64) -> u32 {
        if debt > self.tolerance {
            return 0;
        }
        u32::try_from((self.tolerance - debt) / self.interval + 1).unwrap_or(u32::MAX)
    }

    /// The cell's TAT as this rate sees it at `now`: at least `now`, its debt rescaled when
    /// it was counted in another interval.
    fn tat(&self, cell: Cell, now: u64) -> u64 {
        if cell.interval == 0 || cell.tat <= now {
            return now;
        }
        let debt = cell.tat - now;
        if cell.interval == self.interval {
            return cell.tat;
        }
        let scaled = u128::from(debt) * u128::from(self.interval) / u128::from(cell.interval);
        now.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
    }
}

// === impl Plan ===

impl Plan {
    /// What is left with these debts (nanoseconds of TAT ahead of now, after the request
    /// was spent), the quota's when the plan has one.
    // Why: the Redis backend hands back its debts and this turns them into the same answer
    // as the local one. Regression: tests::room_counts_down_and_the_quota_binds
    pub fn room(&self, rate_debt: u64, quota_debt: u64) -> Room {
        let mut room = Room {
            requests: self.rate.limit(),
            remaining: self.rate.remaining(rate_debt),
            reset: rate_debt,
        };
        if let Some(q) = self.quota {
            let left = q.remaining(quota_debt);
            if left < room.remaining {
                room = Room {
                    requests: q.limit(),
                    remaining: left,
                    reset: quota_debt,
                };
            }
        }
        room
    }

    /// Checks one request at `now`; on success (and [`Mode::Spend`]) `state` is spent, and
    /// the [`Room`] left is returned.
    pub fn check(&self, state: &mut State, now: u64, mode: Mode) -> Result<Room, Wait> {
        let rate_tat = self.rate.tat(state.rate, now);
        if mode == Mode::Refund {
            // One interval back on each TAT, never behind now (a full budget stays full).
            state.rate = Cell {
                tat: rate_tat.saturating_sub(self.rate.interval).max(now),
                interval: self.rate.interval,
            };
            let mut quota_debt = 0;
            if let Some(q) = self.quota {
                let tat = q.tat(state.quota, now);
                state.quota = Cell {
                    tat: tat.saturating_sub(q.interval).max(now),
                    interval: q.interval,
                };
                quota_debt = state.quota.tat - now;
            }
            return Ok(self.room(state.rate.tat - now, quota_debt));
        }
        let mut wait = Wait {
            nanos: rate_tat
                .saturating_sub(self.rate.tolerance)
                .saturating_sub(now),
            requests: self.rate.limit(),
        };
        let quota_tat = self.quota.map(|q| {
            let tat = q.tat(state.quota, now);
            let w = tat.saturating_sub(q.tolerance).saturating_sub(now);
            if w > wait.nanos {
                wait = Wait {
                    nanos: w,
                    requests: q.limit(),
                };
            }
            (q, tat)
        });
        if wait.nanos > 0 {
            return Err(wait);
        }
        let mut quota_debt = 0;
        if mode == Mode::Spend {
            state.rate = Cell {
                tat: rate_tat.saturating_add(self.rate.interval),
                interval: self.rate.interval,
            };
            if let Some((q, tat)) = quota_tat {
                state.quota = Cell {
                    tat: tat.saturating_add(q.interval),
                    interval: q.interval,
                };
                quota_debt = state.quota.tat.saturating_sub(now);
            }
            Ok(self.room(state.rate.tat.saturating_sub(now), quota_debt))
        } else {
            if let Some((_, tat)) = quota_tat {
                quota_debt = tat.saturating_sub(now);
            }
            Ok(self.room(rate_tat.saturating_sub(now), quota_debt))
        }
    }
}

// === impl State ===

impl State {
    /// Whether the key is back at a full budget at `now` (dropping it loses nothing).
    pub fn is_idle(&self, now: u64) -> bool {
        self.rate.tat <= now && self.quota.tat <= now
    }

    /// How far ahead of `now` it is: what evicting it would hand back.
    pub fn debt(&self, now: u64) -> u64 {
        self.rate.tat.max(self.quota.tat).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn plan(requests: u32, per: u64, burst: Option<u32>) -> Plan {
        Plan {
            rate: Rate::new(requests, Duration::from_secs(per), burst).unwrap(),
            quota: None,
        }
    }

    #[test]
    fn a_refund_gives_back_one_request_never_past_full() {
        let p = plan(3, 60, None);
        let mut s = State::default();
        let t0 = 100 * S;
        for _ in 0..3 {
            assert!(p.check(&mut s, t0, Mode::Spend).is_ok());
        }
        assert!(p.check(&mut s, t0, Mode::Peek).is_err());
        assert!(p.check(&mut s, t0, Mode::Refund).is_ok());
        assert!(
            p.check(&mut s, t0, Mode::Spend).is_ok(),
            "the one given back"
        );
        assert!(p.check(&mut s, t0, Mode::Peek).is_err());
        // Refunds on a full budget add nothing.
        let mut full = State::default();
        for _ in 0..5 {
            assert!(p.check(&mut full, t0, Mode::Refund).is_ok());
        }
        for _ in 0..3 {
            assert!(p.check(&mut full, t0, Mode::Spend).is_ok());
        }
        assert!(p.check(&mut full, t0, Mode::Spend).is_err());
    }

    #[test]
    fn rates_past_the_horizon_refused() {
        const YEAR: u64 = 365 * 24 * 3600;
        assert!(Rate::new(2, Duration::from_secs(1000 * YEAR), None).is_err());
        assert!(Rate::new(1, Duration::from_secs(YEAR), Some(585)).is_err());
        // A long but sane one passes, and counts.
        let p = Plan {
            rate: Rate::new(2, Duration::from_secs(100 * YEAR), None).unwrap(),
            quota: None,
        };
        let mut s = State::default();
        assert!(p.check(&mut s, S, Mode::Spend).is_ok());
        assert!(p.check(&mut s, S, Mode::Spend).is_ok());
        assert!(p.check(&mut s, S, Mode::Spend).is_err());
    }

    #[test]
    fn burst_then_steady_rate() {
        // 6 a minute, 3 at once: one every 10 s.
        let p = plan(6, 60, Some(3));
        let mut s = State::default();
        let t0 = 100 * S;
        for _ in 0..3 {
            assert!(p.check(&mut s, t0, Mode::Spend).is_ok());
        }
        assert_eq!(p.check(&mut s, t0, Mode::Spend).unwrap_err().nanos, 10 * S);
        assert_eq!(
            p.check(&mut s, t0 + 4 * S, Mode::Spend).unwrap_err().nanos,
            6 * S
        );
        assert!(p.check(&mut s, t0 + 10 * S, Mode::Spend).is_ok());
        assert!(p.check(&mut s, t0 + 10 * S, Mode::Spend).is_err());
        // Peeking never spends.
        let mut fresh = State::default();
        for _ in 0..10 {
            assert!(p.check(&mut fresh, t0, Mode::Peek).is_ok());
        }
        assert_eq!(fresh, State::default());
    }

    #[test]
    fn quota_caps_a_generous_rate() {
        let p = Plan {
            rate: Rate::new(10, Duration::from_secs(1), None).unwrap(),
            quota: Some(Rate::new(15, Duration::from_secs(86_400), None).unwrap()),
        };
        let mut s = State::default();
        let mut now = S;
        let mut allowed = 0;
        for _ in 0..100 {
            if p.check(&mut s, now, Mode::Spend).is_ok() {
                allowed += 1;
            }
            now += S / 5;
        }
        assert_eq!(allowed, 15, "the day's quota, not 5 a second for 20 s");
        let w = p.check(&mut s, now, Mode::Spend).unwrap_err();
        assert_eq!(w.requests, 15, "the quota refused");
        // A refusal by the quota spends nothing of the rate.
        assert_eq!(s.rate.tat.saturating_sub(now), 0);
    }

    #[test]
    fn a_tightened_rate_keeps_the_requests_spent() {
        // 10 a minute, all 10 spent.
        let loose = plan(10, 60, None);
        let mut s = State::default();
        let t0 = 100 * S;
        for _ in 0..10 {
            loose.check(&mut s, t0, Mode::Spend).unwrap();
        }
        // Now 2 a minute: 10 spent is 8 over, four minutes of debt; no fresh burst.
        let tight = plan(2, 60, None);
        let w = tight.check(&mut s, t0, Mode::Spend).unwrap_err();
        assert_eq!(w.nanos, 270 * S);
        // Loosened instead: 10 spent of 20 leaves 10.
        let mut s2 = State::default();
        for _ in 0..10 {
            loose.check(&mut s2, t0, Mode::Spend).unwrap();
        }
        let wide = plan(20, 60, None);
        for i in 0..10 {
            assert!(wide.check(&mut s2, t0, Mode::Spend).is_ok(), "{i}");
        }
        assert!(wide.check(&mut s2, t0, Mode::Spend).is_err());
    }

    #[test]
    fn room_counts_down_and_the_quota_binds() {
        // 6 a minute, 3 at once: 2, 1, 0 left, the budget whole 10, 20, 30 s later.
        let p = plan(6, 60, Some(3));
        let mut s = State::default();
        let t0 = 100 * S;
        for (left, reset) in [(2, 10), (1, 20), (0, 30)] {
            let room = p.check(&mut s, t0, Mode::Spend).unwrap();
            assert_eq!(
                (room.requests, room.remaining, room.reset),
                (6, left, reset * S)
            );
        }
        // 10 s on, one came back; peeking says so and spends nothing.
        let peek = p.check(&mut s, t0 + 10 * S, Mode::Peek).unwrap();
        assert_eq!((peek.remaining, peek.reset), (1, 20 * S));
        // A quota with less left than the rate describes the answer.
        let q = Plan {
            rate: Rate::new(10, Duration::from_secs(1), None).unwrap(),
            quota: Some(Rate::new(3, Duration::from_secs(300), None).unwrap()),
        };
        let mut s = State::default();
        let room = q.check(&mut s, t0, Mode::Spend).unwrap();
        assert_eq!((room.requests, room.remaining, room.reset), (3, 2, 100 * S));
        // The Redis backend's debts give the same answer.
        assert_eq!(q.room(S / 10, 100 * S), room);
    }

    #[test]
    fn limit_covers_the_burst() {
        // 2 a second, 4 at once: a fresh client has 3 left of a limit of 4, never of 2; the
        // refusal after the burst names the same limit.
        let p = plan(2, 1, Some(4));
        let mut s = State::default();
        let t0 = 100 * S;
        let first = p.check(&mut s, t0, Mode::Spend).unwrap();
        assert_eq!((first.requests, first.remaining), (4, 3));
        for _ in 0..3 {
            let room = p.check(&mut s, t0, Mode::Spend).unwrap();
            assert!(room.remaining <= room.requests);
        }
        assert_eq!(p.check(&mut s, t0, Mode::Spend).unwrap_err().requests, 4);
        // A burst below the rate leaves the rate as the limit.
        assert_eq!(plan(6, 60, Some(3)).rate.limit(), 6);
    }

    #[test]
    fn refuses_rates_too_fast_to_count() {
        assert_eq!(
            Rate::new(0, Duration::from_secs(1), None).unwrap_err().0,
            "requests"
        );
        assert_eq!(
            Rate::new(1, Duration::from_secs(1), Some(0)).unwrap_err().0,
            "burst"
        );
        assert_eq!(Rate::new(1, Duration::ZERO, None).unwrap_err().0, "per");
        assert_eq!(
            Rate::new(2_000_000_000, Duration::from_secs(1), None)
                .unwrap_err()
                .0,
            "per"
        );
    }
}
