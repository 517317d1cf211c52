//! This process's budgets: one [`State`] per key hash, in up to 64 shards each behind its own
//! mutex (no global lock; a shard's critical section is one hash-map probe), bounded.
//!
//! Invariants:
//! - At most about `max_keys` keys are held, across the shards (two shards inserting at once, or
//!   a newcomer finding every neighbour's lock taken, may pass it by a key). Every key that
//!   spends is kept. A full store makes room among a handful of entries of the newcomer's
//!   shard (and, if it holds fewer, of up to 8 neighbours whose locks are free): it drops the
//!   newcomer's shard's entries back at a full budget (nothing is lost), or else the one entry
//!   nearest to a full budget of all it looked at. A flood of fresh keys pushes out fresh keys
//!   first, not the state of a key deep in debt, which is the state worth keeping.
//! - The shard count is set when the store is made (a reload raising `max_keys` keeps it).
//! - Small stores have fewer shards (about 16 keys each, 64 at most), so that a full store's
//!   neighbourhood holds enough entries to choose from.
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

/// Shards at most: enough that two cores (or sixty-four) rarely meet on one lock.
const SHARDS: usize = 64;

/// Keys per shard a store is sized for (its shard count, up to [`SHARDS`]).
const KEYS_PER_SHARD: usize = 16;

/// Entries looked at when a full store must make room in a shard.
const SAMPLE: usize = 16;

/// Other shards tried (without waiting for their locks) when the newcomer's is sparse.
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
            shards: (0..(max_keys / KEYS_PER_SHARD).clamp(1, SHARDS))
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
        let index = shard_of(key, self.shards.len());
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
            for _ in 0..ROUNDS {
                if self.held.load(Ordering::Relaxed) < max || !self.make_room(&mut map, index, now)
                {
                    break;
                }
            }
            // Why always: a newcomer the store did not keep came back at a full budget, every
            // time: once the store was full of keys in debt, one more address had no limit.
            // Regression: tests::a_full_store_of_debtors_still_limits_a_newcomer
            map.insert(key, state);
            self.held.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Drops entries to make room for a newcomer: its own shard's idle ones (`map`, locked),
    /// or else the one nearest to a full budget among a few entries of its shard and, when it
    /// holds fewer than that few, of the neighbours whose locks are free (never waited on, so
    /// two callers cannot deadlock).
    /// False if it found nothing to drop.
    ///
    /// Why the neighbours: with the shard alone to choose from, a newcomer whose shard held
    /// only a client deep in debt pushed that client out, and the client came back at a full
    /// budget. Regression: tests::a_flood_does_not_push_out_a_small_stores_debtor
    fn make_room(
        &self,
        map: &mut HashMap<u64, State, foldhash::fast::FixedState>,
        index: usize,
        now: u64,
    ) -> bool {
        let idle = drop_idle(map, now);
        if idle > 0 {
            self.held.fetch_sub(idle, Ordering::Relaxed);
            return true;
        }
        // A shard with a full sample has choice enough; a sparse one asks its neighbours.
        let shards = self.shards.len();
        let asked = if map.len() < SAMPLE { NEIGHBOURS } else { 0 };
        let mut others = Vec::new();
        for i in 1..=asked.min(shards - 1) {
            if let Some(Ok(guard)) = self.shards.get((index + i) % shards).map(Mutex::try_lock) {
                others.push(guard);
            }
        }
        // The nearest to a full budget: (debt, key, in which map: None for the newcomer's).
        let mut nearest: Option<(u64, u64, Option<usize>)> =
            nearest_of(map, now).map(|(d, k)| (d, k, None));
        for (i, other) in others.iter().enumerate() {
            if let Some((d, k)) = nearest_of(other, now)
                && nearest.is_none_or(|(n, _, _)| d < n)
            {
                nearest = Some((d, k, Some(i)));
            }
        }
        let removed = match nearest {
            None => false,
            Some((_, k, None)) => map.remove(&k).is_some(),
            Some((_, k, Some(i))) => others.get_mut(i).is_some_and(|m| m.remove(&k).is_some()),
        };
        if removed {
            self.held.fetch_sub(1, Ordering::Relaxed);
        }
        removed
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

fn shard_of(key: u64, shards: usize) -> usize {
    // The high bits: the map inside the shard uses the low ones.
    usize::try_from(key >> 58).unwrap_or(0) % shards.max(1)
}

/// Drops the idle entries among the first few of a shard, and says how many.
fn drop_idle(map: &mut HashMap<u64, State, foldhash::fast::FixedState>, now: u64) -> usize {
    let mut idle: [u64; SAMPLE] = [0; SAMPLE];
    let mut n_idle = 0;
    for (k, s) in map.iter().take(SAMPLE) {
        if s.is_idle(now)
            && let Some(slot) = idle.get_mut(n_idle)
        {
            *slot = *k;
            n_idle += 1;
        }
    }
    for k in idle.iter().take(n_idle) {
        map.remove(k);
    }
    n_idle
}

/// Among the first few entries of a shard, the one nearest to a full budget: (debt, key).
fn nearest_of(
    map: &HashMap<u64, State, foldhash::fast::FixedState>,
    now: u64,
) -> Option<(u64, u64)> {
    map.iter()
        .take(SAMPLE)
        .map(|(k, s)| (s.debt(now), *k))
        .min()
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

    /// A store full of keys that spent their budget still limits one more: it is kept (a key
    /// in debt makes room), so its fourth request is refused as anyone's.
    #[test]
    fn a_full_store_of_debtors_still_limits_a_newcomer() {
        let (_clock, store, plan) = small_store();
        for i in 0..64 {
            for _ in 0..3 {
                store.check(ip_key(&store, i), &plan, Mode::Spend).unwrap();
            }
        }
        let newcomer = ip_key(&store, 1_000);
        for _ in 0..3 {
            store.check(newcomer, &plan, Mode::Spend).unwrap();
        }
        assert!(
            store.check(newcomer, &plan, Mode::Spend).is_err(),
            "a newcomer to a full store had no limit"
        );
        assert!(store.len() <= 65, "{} keys", store.len());
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
