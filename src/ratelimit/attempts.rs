//! A brute-force guard's attempts under way, per key, in this process.
//!
//! A guard spends one request of a client's budget for each attempt before the credential is
//! checked, and gives it back when the attempt did not fail (`decision::engine`). Held
//! budget looks spent: with a budget of 3, a fourth valid request sent while three are being
//! checked was refused with 429 and a `Retry-After` of a whole interval, though the budget
//! came back milliseconds later. So a request the guard refuses while budget may be held by
//! attempts of its key waits for them (bounded by [`Attempts::wait_bound`]) and asks again.
//! Per key, two counts:
//! - `held`: attempts whose spend was allowed, not settled yet. An attempt given back wakes
//!   one waiter, which may now spend it.
//! - `pending`: first tries whose spend is still on its way (a Redis round trip): one of
//!   them may be about to hold budget, so a first try refused meanwhile waits too.
//!
//! A retry (a waiter woken) waits again only while budget is held, and never counts as
//! pending. Once nothing is held or pending, every waiter is woken: what is spent now is
//! spent by failures, and each is refused at its retry.
//!
//! Invariants:
//! - A waiter never gets past the guard without spending: waiting only delays a refusal, so
//!   guesses sent at once get no more checks than guesses sent one by one.
//! - Guesses sent at once against a spent budget cost at most two spends each (their first
//!   try and one retry), never one per other guess.
//! - An attempt is settled when its [`Attempt`] is dropped, even if the request is: a
//!   cancelled check never leaves waiters waiting on it.
//! - Attempts under way in other gateways (a guard in Redis) are not seen here: a refusal
//!   they cause is answered at once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Shards of the table: attempts of different clients rarely share a lock.
const SHARDS: usize = 16;

/// How long a refused request waits for the attempts before it, at most.
pub const WAIT_AT_MOST: Duration = Duration::from_secs(2);

/// One shard of the table: the slots of the keys hashed to it.
type Shard = Mutex<HashMap<u64, Slot>>;

/// A wake-up for when another attempt of the key settles, registered already.
pub type Wake = Pin<Box<OwnedNotified>>;

/// Attempts under way, by key (the guard's key hash).
#[derive(Debug)]
pub struct Attempts {
    shards: Box<[Shard]>,
}

/// The attempts of one key; the slot leaves the table when both counts are 0.
#[derive(Debug, Default)]
struct Slot {
    held: usize,
    pending: usize,
    settled: Arc<Notify>,
}

/// Where an attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its spend is on its way (`first`: counted as pending).
    Asking { first: bool },
    /// Its spend was allowed: it holds budget.
    Holding,
    /// Settled.
    Done,
}

/// One attempt under way; settled when dropped (or when [`Attempt::refused`]).
#[derive(Debug)]
pub struct Attempt<'a> {
    attempts: &'a Attempts,
    key: u64,
    state: State,
    given_back: bool,
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
    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        let i = usize::try_from(key % SHARDS as u64).unwrap_or(0);
        // A poisoned shard only means a panic elsewhere mid-update; its data is plain counts.
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An attempt of `key` asks to spend: its first try (counted as pending until its spend
    /// comes back), or a retry after a wait (not counted).
    pub fn begin(&self, key: u64, first: bool) -> Attempt<'_> {
        if first {
            self.shard(key).entry(key).or_default().pending += 1;
        }
        Attempt {
            attempts: self,
            key,
            state: State::Asking { first },
            given_back: false,
        }
    }

    /// Keys with attempts under way now (tests).
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

    /// Moves one attempt of `key` from `from` to `to`; with `wait` (a refused attempt),
    /// registers a wake-up if budget may still be held for it to wait on.
    fn settle(
        &self,
        key: u64,
        from: State,
        to: State,
        given_back: bool,
        wait: bool,
    ) -> Option<Wake> {
        let mut shard = self.shard(key);
        let slot = shard.entry(key).or_default();
        match from {
            State::Asking { first: true } => slot.pending = slot.pending.saturating_sub(1),
            State::Holding => slot.held = slot.held.saturating_sub(1),
            State::Asking { first: false } | State::Done => {}
        }
        if to == State::Holding {
            slot.held += 1;
        }
        if from == State::Holding && given_back {
            // One request back: one waiter may spend it.
            slot.settled.notify_one();
        }
        // A first try waits for the other first tries too; a retry only for held budget.
        let worth_waiting =
            slot.held > 0 || (from == (State::Asking { first: true }) && slot.pending > 0);
        if wait && worth_waiting {
            let mut wake = Box::pin(Arc::clone(&slot.settled).notified_owned());
            // Registered under the lock every settling takes: none is missed.
            wake.as_mut().enable();
            return Some(wake);
        }
        if slot.held == 0 && slot.pending == 0 {
            // Nothing under way any more: whoever waits is refused or admitted by what is
            // spent, at its retry.
            if let Some(slot) = shard.remove(&key) {
                slot.settled.notify_waiters();
            }
        }
        None
    }
}

// === impl Attempt ===

impl Attempt<'_> {
    /// The attempt's spend was allowed: it holds budget until it settles.
    pub fn allowed(&mut self) {
        let from = self.state;
        self.state = State::Holding;
        self.attempts
            .settle(self.key, from, State::Holding, false, false);
    }

    /// The attempt's spend was refused: it holds nothing. A wake-up for when budget may be
    /// back, or `None` when none may be (the refusal stands).
    pub fn refused(mut self) -> Option<Wake> {
        let from = self.state;
        self.state = State::Done;
        self.attempts
            .settle(self.key, from, State::Done, false, true)
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
        if self.state != State::Done {
            self.attempts
                .settle(self.key, self.state, State::Done, self.given_back, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_attempt_waits_for_one_given_back() {
        let a = Attempts::default();
        // Three first tries before any spend came back (a Redis round trip).
        let mut first = a.begin(7, true);
        let mut second = a.begin(7, true);
        let refused = a.begin(7, true);
        first.allowed();
        second.allowed();
        let wake = refused.refused().expect("budget held");
        assert!(
            a.begin(8, true).refused().is_none(),
            "another key has nothing under way"
        );
        first.giving_back();
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), wake)
            .await
            .expect("woken by the given-back attempt");
        drop(second);
        assert_eq!(a.keys(), 0, "the last attempt leaves no entry");
    }

    #[tokio::test]
    async fn a_first_try_waits_for_first_tries_a_retry_does_not() {
        let a = Attempts::default();
        let pending = a.begin(7, true);
        let wake = a
            .begin(7, true)
            .refused()
            .expect("a first try is still asking");
        assert!(
            a.begin(7, false).refused().is_none(),
            "a retry waits for held budget only"
        );
        // The last first try refused: nothing held or pending; the waiter is woken.
        assert!(pending.refused().is_none());
        tokio::time::timeout(Duration::from_secs(1), wake)
            .await
            .expect("woken when nothing is under way");
        assert_eq!(a.keys(), 0);
    }

    #[tokio::test]
    async fn a_failed_attempt_wakes_nobody_until_the_last_settles() {
        let a = Attempts::default();
        let mut first = a.begin(7, true);
        let mut second = a.begin(7, true);
        first.allowed();
        second.allowed();
        let mut wake = a.begin(7, true).refused().expect("budget held");
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), wake.as_mut())
                .await
                .is_err(),
            "a failure gives nothing back while budget is still held"
        );
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), wake)
            .await
            .expect("woken when nothing is under way any more");
        assert_eq!(a.keys(), 0);
    }
}
