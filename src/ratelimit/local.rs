//! This process's budgets: one [`State`] per key hash, in 64 shards each behind its own
//! mutex (no global lock; a shard's critical section is one hash-map probe), bounded.
//!
//! Invariants:
//! - At most `max_keys` keys are held (rounded up to a multiple of the shard count). A shard
//!   that is full drops, among a handful of its entries, those back at a full budget (nothing
//!   is lost), or else the one nearest to it: a flood of fresh keys cannot push out the state
//!   of a key deep in debt, which is the state worth keeping.
//! - A housekeeping task drops idle keys every 30 s, so memory follows the active keys.
//! - The store outlives a changed limit definition: a reload hands it to the new limit, whose
//!   rates rescale the debts ([`super::gcra`]).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::gcra::{Mode, Plan, Room, State, Wait};
use crate::clock::Clock;

/// Shards: enough that two cores (or sixty-four) rarely meet on one lock.
const SHARDS: usize = 64;

/// Entries looked at when a full shard must make room.
const SAMPLE: usize = 16;

/// How often idle keys are dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// Bounded per-key GCRA state.
pub struct LocalStore {
    shards: Box<[Mutex<HashMap<u64, State, foldhash::fast::FixedState>>]>,
    /// Seeds the key hashes: random per process, so nobody can aim collisions.
    pub hasher: foldhash::fast::RandomState,
    per_shard: AtomicUsize,
    clock: Clock,
    housekeeping: AtomicBool,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("keys", &self.len())
            .field("max_keys", &self.max_keys())
            .finish_non_exhaustive()
    }
}

// === impl LocalStore ===

impl LocalStore {
    /// An empty store holding at most `max_keys` keys.
    pub fn new(max_keys: usize, clock: Clock) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(foldhash::fast::FixedState::default())))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            per_shard: AtomicUsize::new(max_keys.div_ceil(SHARDS).max(1)),
            clock,
            housekeeping: AtomicBool::new(false),
        })
    }

    /// A hasher for one key.
    pub fn key_hasher(&self) -> impl Hasher {
        self.hasher.build_hasher()
    }

    /// Changes the bound (a reload that kept the store); shards over it shrink as they fill.
    pub fn set_max_keys(&self, max_keys: usize) {
        self.per_shard
            .store(max_keys.div_ceil(SHARDS).max(1), Ordering::Relaxed);
    }

    /// The bound.
    pub fn max_keys(&self) -> usize {
        self.per_shard.load(Ordering::Relaxed) * SHARDS
    }

    /// The clock's now, in monotonic nanoseconds from 1 (0 means "never seen").
    pub fn now(&self) -> u64 {
        u64::try_from(self.clock.monotonic().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Checks (and with [`Mode::Spend`] spends, with [`Mode::Refund`] gives back) one request
    /// of `key` under `plan`. A key not held is at a full budget: a refund leaves it out.
    pub fn check(&self, key: u64, plan: &Plan, mode: Mode) -> Result<Room, Wait> {
        let now = self.now();
        let Some(shard) = self.shards.get(shard_of(key)) else {
            return plan.check(&mut State::default(), now, mode);
        };
        // A poisoned shard only means a panic elsewhere mid-update; its data is plain numbers.
        let mut map = shard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(state) = map.get_mut(&key) {
            return plan.check(state, now, mode);
        }
        let mut state = State::default();
        let result = plan.check(&mut state, now, mode);
        if mode == Mode::Spend && result.is_ok() {
            let cap = self.per_shard.load(Ordering::Relaxed);
            while map.len() >= cap {
                make_room(&mut map, now);
            }
            map.insert(key, state);
        }
        result
    }

    /// Keys held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the keys back at a full budget (they would start there anyway).
    pub fn housekeep(&self) {
        let now = self.now();
        for shard in &*self.shards {
            if let Ok(mut m) = shard.lock() {
                m.retain(|_, s| !s.is_idle(now));
                m.shrink_to_fit();
            }
        }
    }

    /// Starts the housekeeping task once; it ends when the store is dropped.
    pub fn start(self: &Arc<Self>) {
        if self.housekeeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING);
            tick.tick().await;
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(s) => s.housekeep(),
                    None => return,
                }
            }
        });
    }
}

fn shard_of(key: u64) -> usize {
    // The high bits: the map inside the shard uses the low ones.
    usize::try_from(key >> 58).unwrap_or(0) % SHARDS
}

/// Drops one or more entries of a full shard: among the first few, every idle one, or else
/// the one with the least debt.
fn make_room(map: &mut HashMap<u64, State, foldhash::fast::FixedState>, now: u64) {
    let mut idle: [u64; SAMPLE] = [0; SAMPLE];
    let mut n_idle = 0;
    let mut least: Option<(u64, u64)> = None;
    for (k, s) in map.iter().take(SAMPLE) {
        if s.is_idle(now) {
            if let Some(slot) = idle.get_mut(n_idle) {
                *slot = *k;
                n_idle += 1;
            }
        } else if least.is_none_or(|(_, d)| s.debt(now) < d) {
            least = Some((*k, s.debt(now)));
        }
    }
    if n_idle > 0 {
        for k in idle.iter().take(n_idle) {
            map.remove(k);
        }
    } else if let Some((k, _)) = least {
        map.remove(&k);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::Hasher as _;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;
    use crate::ratelimit::gcra::Rate;

    /// A flood of a million distinct client addresses: the store never holds more than its
    /// bound, and the one client deep in debt is still refused afterwards.
    #[test]
    fn a_million_addresses_stay_within_the_bound() {
        let clock = Clock::manual(1_000);
        let store = LocalStore::new(10_000, clock.clone());
        let plan = Plan {
            rate: Rate::new(5, Duration::from_secs(3600), None).unwrap(),
            quota: None,
        };
        let key = |ip: IpAddr| {
            let mut h = store.key_hasher();
            crate::ratelimit::key::write_ip(&mut h, ip);
            h.finish()
        };
        let victim = key(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        for _ in 0..5 {
            store.check(victim, &plan, Mode::Spend).unwrap();
        }
        assert!(store.check(victim, &plan, Mode::Spend).is_err());
        for i in 0..1_000_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            store.check(key(ip), &plan, Mode::Spend).unwrap();
            if i % 100_000 == 0 {
                assert!(store.len() <= store.max_keys(), "{} keys", store.len());
            }
        }
        assert!(store.len() <= store.max_keys(), "{} keys", store.len());
        assert!(store.max_keys() <= 10_000 + SHARDS);
        assert!(
            store.check(victim, &plan, Mode::Spend).is_err(),
            "the flood did not buy the victim's key a fresh burst"
        );
        // Once everyone is back at a full budget, housekeeping drops them all.
        clock.advance(Duration::from_secs(3600));
        store.housekeep();
        assert_eq!(store.len(), 0);
    }
}
