//! A brute-force guard's attempts under way, per key, in this process.
//!
//! A guard spends one request of a client's budget for each attempt before the credential is
//! checked, and gives it back when the attempt did not fail (`decision::engine`). Held
//! budget looks spent: with a budget of 3, a fourth valid request sent while three are being
//! checked was refused with 429 and a `Retry-After` of a whole interval, though the budget
//! came back milliseconds later. So each attempt is counted here from before its spend
//! ([`Attempts::begin`]) until it settles, and a request the guard refuses while other
//! attempts of its key are under way waits for them (bounded by [`Attempts::wait_bound`])
//! and asks again:
//! - an attempt given back wakes one waiter, which may now spend it;
//! - the last attempt of a key settling wakes every waiter: what is spent now is spent by
//!   failures, and they are refused at once.
//!
//! Invariants:
//! - Counted before the spend is asked: requests sent together see each other even while
//!   their spends are still on their way (a Redis round trip).
//! - A waiter never gets past the guard without spending: waiting only delays a refusal, so
//!   guesses sent at once get no more checks than guesses sent one by one.
//! - An attempt is settled when its [`Attempt`] is dropped, even if the request is: a
//!   cancelled check never leaves waiters waiting on it.
//! - Attempts under way in other gateways (a guard in Redis) are not seen here: a refusal
//!   they cause is answered at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Shards of the table: attempts of different clients rarely share a lock.
const SHARDS: usize = 16;

/// How long a refused request waits for the attempts before it, at most.
pub const WAIT_AT_MOST: Duration = Duration::from_secs(2);

/// One shard of the table: the slots of the keys hashed to it.
type Shard = Mutex<HashMap<u64, Arc<Slot>>>;

/// Attempts being checked, by key (the guard's key hash).
#[derive(Debug)]
pub struct Attempts {
    shards: Box<[Shard]>,
}

/// The attempts of one key.
#[derive(Debug, Default)]
struct Slot {
    /// Attempts not settled; the slot leaves the table at 0. Changed under the shard's lock.
    count: std::sync::atomic::AtomicUsize,
    settled: Arc<Notify>,
}

/// One attempt under way; settled when dropped (or when [`Attempt::refused`]).
#[derive(Debug)]
pub struct Attempt<'a> {
    attempts: &'a Attempts,
    key: u64,
    given_back: bool,
    /// Settled already (refused).
    settled: bool,
}

impl Default for Attempts {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

// === impl Attempts ===

impl Attempts {
    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        let i = usize::try_from(key % SHARDS as u64).unwrap_or(0);
        // A poisoned shard only means a panic elsewhere mid-update; its data is plain counts.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An attempt of `key` begins: counted from before its spend is asked.
    pub fn begin(&self, key: u64) -> Attempt<'_> {
        let mut shard = self.shard(key);
        let slot = shard.entry(key).or_default();
        slot.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Attempt {
            attempts: self,
            key,
            given_back: false,
            settled: false,
        }
    }

    /// Keys with attempts being checked now (tests).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    /// How long a refused request may wait: [`WAIT_AT_MOST`], cut to the door's deadline.
    pub fn wait_bound(deadline: Option<tokio::time::Instant>) -> Duration {
        crate::request::facts::call_budget(WAIT_AT_MOST, deadline)
    }

    /// Settles one attempt of `key`; with `wait`, registers a wake-up for the next one to
    /// settle, unless none is left under way.
    fn settle(
        &self,
        key: u64,
        given_back: bool,
        wait: bool,
    ) -> Option<std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>> {
        let mut shard = self.shard(key);
        let slot = shard.get(&key)?;
        let left = slot
            .count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(1);
        if left == 0 {
            // Nothing under way any more: whoever waits is refused or admitted by what is
            // spent.
            if let Some(slot) = shard.remove(&key) {
                slot.settled.notify_waiters();
            }
            return None;
        }
        if given_back {
            // One request back: one waiter may spend it.
            slot.settled.notify_one();
        }
        wait.then(|| {
            let mut wake = Box::pin(Arc::clone(&slot.settled).notified_owned());
            // Registered under the lock every settling takes: none is missed.
            wake.as_mut().enable();
            wake
        })
    }
}

// === impl Attempt ===

impl Attempt<'_> {
    /// The attempt's spend was refused: it holds nothing. A wake-up for when another attempt
    /// of its key settles, or `None` when none is under way (the refusal stands).
    pub fn refused(mut self) -> Option<std::pin::Pin<Box<tokio::sync::futures::OwnedNotified>>> {
        self.settled = true;
        self.attempts.settle(self.key, false, true)
    }

    /// The attempt did not fail: its request is being given back. Said before the refund is
    /// asked, so that an attempt dropped while asking still wakes a waiter (one check more,
    /// at worst); the wake-up itself comes when the attempt is dropped.
    pub fn giving_back(&mut self) {
        self.given_back = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.attempts.settle(self.key, self.given_back, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_attempt_waits_for_one_given_back() {
        let a = Attempts::default();
        // Three under way before any spend came back (a Redis round trip).
        let mut first = a.begin(7);
        let second = a.begin(7);
        let refused = a.begin(7);
        let wake = refused.refused().expect("others under way");
        let alone = a.begin(8);
        assert!(alone.refused().is_none(), "another key has none under way");
        first.giving_back();
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), wake)
            .await
            .expect("woken by the given-back attempt");
        drop(second);
        assert_eq!(a.keys(), 0, "the last attempt leaves no entry");
    }

    #[tokio::test]
    async fn a_failed_attempt_wakes_nobody_until_the_last_settles() {
        let a = Attempts::default();
        let first = a.begin(7);
        let second = a.begin(7);
        let mut wake = a.begin(7).refused().expect("attempts under way");
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wake.as_mut())
                .await
                .is_err(),
            "a failure gives nothing back while another attempt is under way"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), wake)
            .await
            .expect("woken when nothing is under way any more");
        assert_eq!(a.keys(), 0);
    }
}
