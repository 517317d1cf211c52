//! This process's budgets: one [`State`] per key hash, in 64 shards each behind its own
//! mutex (no global lock; a shard's critical section is one hash-map probe), bounded.
//!
//! Invariants:
//! - At most `max_keys` keys are held, across the shards (two shards inserting at once may pass
//!   it by a key). A full store makes room in the newcomer's shard, or else in a neighbour's
//!   whose lock is free: among a handful of entries, it drops those back at a full budget
//!   (nothing is lost), or else the one nearest to it, if that one is nearer than the
//!   newcomer; when none is, the newcomer is the one not kept. A flood of fresh keys cannot
//!   push out the state of a key deep in debt, which is the state worth keeping.
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

/// Entries looked at when a full store must make room in a shard.
const SAMPLE: usize = 16;

/// Other shards tried (without waiting for their locks) when the newcomer's has no room.
const NEIGHBOURS: usize = 8;

/// Rounds of making room for one newcomer: a store over a lowered bound shrinks by a few keys
/// per newcomer, not all at once under one lock.
const ROUNDS: usize = 4;

/// How often idle keys are dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// Bounded per-key GCRA state.
pub struct LocalStore {
    shards: Box<[Mutex<HashMap<u64, State, foldhash::fast::FixedState>>]>,
    /// Seeds the key hashes: random per process, so nobody can aim collisions.
    pub hasher: foldhash::fast::RandomState,
    /// The bound, in keys, across the shards.
    ///
    /// Why not per shard: with `max_keys` split into 64 shares, a small store (a limit over a
    /// few partners' API keys, `max_keys: 64`) held one key per shard, so two clients whose
    /// keys shared a shard pushed each other out and each came back at a full budget: 132
    /// requests through where 32 clients' 3 each allowed 96, the store a third empty.
    /// Regression: tests::a_small_store_keeps_every_key_it_has_room_for
    max: AtomicUsize,
    /// Keys held, across the shards (changed under the shard's lock).
    held: AtomicUsize,
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
            max: AtomicUsize::new(max_keys.max(1)),
            held: AtomicUsize::new(0),
            clock,
            housekeeping: AtomicBool::new(false),
        })
    }

    /// A hasher for one key.
    pub fn key_hasher(&self) -> impl Hasher {
        self.hasher.build_hasher()
    }

    /// Changes the bound (a reload that kept the store); a store over it shrinks as new keys
    /// come.
    pub fn set_max_keys(&self, max_keys: usize) {
        self.max.store(max_keys.max(1), Ordering::Relaxed);
    }

    /// The bound.
    pub fn max_keys(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// The clock's now, in monotonic nanoseconds from 1 (0 means "never seen").
    pub fn now(&self) -> u64 {
        u64::try_from(self.clock.monotonic().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Checks (and with [`Mode::Spend`] spends, with [`Mode::Refund`] gives back) one request
    /// of `key` under `plan`. A key not held is at a full budget: a refund leaves it out.
    pub fn check(&self, key: u64, plan: &Plan, mode: Mode) -> Result<Room, Wait> {
        let now = self.now();
        let index = shard_of(key);
        let Some(shard) = self.shards.get(index) else {
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
            let max = self.max.load(Ordering::Relaxed);
            let debt = state.debt(now);
            for _ in 0..ROUNDS {
                if self.held.load(Ordering::Relaxed) < max {
                    break;
                }
                // Why the newcomer competes: it replaced the key in debt it sampled, so a flood
                // of fresh addresses handed a client that had spent its budget a new one.
                // Regression: tests::a_flood_does_not_push_out_a_small_stores_debtor
                if !self.make_room(&mut map, index, debt, now) {
                    return result;
                }
            }
            map.insert(key, state);
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Drops entries to make room for a newcomer `debt` ahead of `now`: from its own shard
    /// (`map`, locked), or else from a neighbour whose lock is free (never waited on, so two
    /// callers cannot deadlock). False if every entry looked at is further from a full
    /// budget than the newcomer.
    fn make_room(
        &self,
        map: &mut HashMap<u64, State, foldhash::fast::FixedState>,
        index: usize,
        debt: u64,
        now: u64,
    ) -> bool {
        let mut dropped = drop_nearest(map, debt, now);
        for i in 1..=NEIGHBOURS {
            if dropped > 0 {
                break;
            }
            if let Some(Ok(mut other)) = self.shards.get((index + i) % SHARDS).map(Mutex::try_lock)
            {
                dropped = drop_nearest(&mut other, debt, now);
            }
        }
        self.held.fetch_sub(dropped, Ordering::Relaxed);
        dropped > 0
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
                let before = m.len();
                m.retain(|_, s| !s.is_idle(now));
                self.held.fetch_sub(before - m.len(), Ordering::Relaxed);
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

/// Drops entries of a shard, and says how many: among the first few, every idle one, or else
/// the one with the least debt if it is less than `debt` (the newcomer's).
fn drop_nearest(
    map: &mut HashMap<u64, State, foldhash::fast::FixedState>,
    debt: u64,
    now: u64,
) -> usize {
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
        n_idle
    } else if let Some((k, _)) = least.filter(|&(_, d)| d < debt) {
        map.remove(&k);
        1
    } else {
        0
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
        assert_eq!(store.max_keys(), 10_000);
        assert!(
            store.check(victim, &plan, Mode::Spend).is_err(),
            "the flood did not buy the victim's key a fresh burst"
        );
        // Once everyone is back at a full budget, housekeeping drops them all.
        clock.advance(Duration::from_secs(3600));
        store.housekeep();
        assert_eq!(store.len(), 0);
    }

    fn small_store() -> (Clock, Arc<LocalStore>, Plan) {
        let clock = Clock::manual(1_000);
        let store = LocalStore::new(64, clock.clone());
        let plan = Plan {
            rate: Rate::new(3, Duration::from_secs(3600), None).unwrap(),
            quota: None,
        };
        (clock, store, plan)
    }

    fn ip_key(store: &LocalStore, i: u32) -> u64 {
        let mut h = store.key_hasher();
        crate::ratelimit::key::write_ip(&mut h, IpAddr::V4(Ipv4Addr::from(0x3c00_0000 + i)));
        h.finish()
    }

    /// 60 clients under a store for 64 keys: each gets its 3 requests, and not a fourth,
    /// whichever shards their keys fall in.
    #[test]
    fn a_small_store_keeps_every_key_it_has_room_for() {
        let (_clock, store, plan) = small_store();
        for round in 0..6 {
            for i in 0..60 {
                let r = store.check(ip_key(&store, i), &plan, Mode::Spend);
                assert_eq!(r.is_ok(), round < 3, "client {i}, request {}", round + 1);
            }
        }
        assert_eq!(store.len(), 60);
    }

    /// A client that spent its budget, then 1,000 fresh addresses through a store for 64 keys:
    /// the store stays within its bound, and the client is still refused.
    #[test]
    fn a_flood_does_not_push_out_a_small_stores_debtor() {
        let (_clock, store, plan) = small_store();
        let victim = ip_key(&store, 0);
        for _ in 0..3 {
            store.check(victim, &plan, Mode::Spend).unwrap();
        }
        for i in 1..=1_000 {
            store.check(ip_key(&store, i), &plan, Mode::Spend).unwrap();
            assert!(store.len() <= 64, "{} keys", store.len());
        }
        assert!(
            store.check(victim, &plan, Mode::Spend).is_err(),
            "the flood bought the client a fresh budget"
        );
    }

    /// A full store makes room with the keys back at a full budget; over a lowered bound, it
    /// makes room before it takes a key.
    #[test]
    fn a_full_store_drops_idle_keys_and_shrinks_to_a_lowered_bound() {
        let (clock, store, plan) = small_store();
        for i in 0..64 {
            store.check(ip_key(&store, i), &plan, Mode::Spend).unwrap();
        }
        assert_eq!(store.len(), 64);
        // Everyone back at a full budget: newcomers take their places.
        clock.advance(Duration::from_secs(3600));
        for i in 64..128 {
            store.check(ip_key(&store, i), &plan, Mode::Spend).unwrap();
            assert!(store.len() <= 64, "{} keys", store.len());
        }
        for i in 64..128 {
            store.check(ip_key(&store, i), &plan, Mode::Spend).unwrap();
        }
        store.set_max_keys(16);
        clock.advance(Duration::from_secs(3600));
        let mut held = store.len();
        for i in 128..160 {
            store.check(ip_key(&store, i), &plan, Mode::Spend).unwrap();
            assert!(
                store.len() <= held.max(16),
                "{} keys after {held}",
                store.len()
            );
            held = store.len();
        }
        assert!(held < 64, "{held} keys");
        store.housekeep();
        clock.advance(Duration::from_secs(3600));
        store.housekeep();
        assert_eq!(store.len(), 0);
        assert_eq!(store.held.load(Ordering::Relaxed), 0);
    }
}
