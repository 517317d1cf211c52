//! A brute-force guard's attempts under way, per key, in this process.
//!
//! A guard spends one request of a client's budget for each attempt before the credential is
//! checked, and gives it back when the attempt did not fail (`decision::engine`). Held
//! budget looks spent: with a budget of 3, a fourth valid request sent while three are being
//! checked was refused with 429 and a `Retry-After` of a whole interval, though the budget
//! came back milliseconds later. So a request the guard refuses while budget may be held by
//! attempts of its key waits for them (bounded by [`Attempts::wait_bound`]) and asks again.
//! Per key:
//! - `held`: attempts whose spend was allowed, not settled yet.
//! - `pending`: first tries whose spend is still on its way (a Redis round trip): one of
//!   them may be about to hold budget.
//! - `retrying`: retries whose spend is on its way, likewise.
//! - `waiting`: refused attempts waiting; `handed`: how many of them were handed a request
//!   given back and have not taken it yet.
//!
//! A refused attempt waits while anything is held or on its way. An attempt given back is
//! handed to one waiter (if one is not handed one already), which asks again. Once nothing is
//! held, on its way or handed, the slot closes: every waiter's refusal stands, without asking
//! again (what is spent now was spent by failures).
//!
//! Invariants:
//! - A waiter never gets past the guard without spending: waiting only delays a refusal, so
//!   guesses sent at once get no more checks than guesses sent one by one.
//! - Every spend after a first try answers a request given back: guesses sent at once
//!   against a spent budget cost one spend each, valid requests one more per request given
//!   back to them, never one per other request.
//! - An attempt is settled when its [`Attempt`] is dropped, even if the request is, and a
//!   waiter leaves when its [`Wake`] is dropped (a request handed to it passes to another):
//!   a cancelled check never leaves waiters waiting on it.
//! - Attempts under way in other gateways (a guard in Redis) are not seen here: a refusal
//!   they cause is answered at once.
//!
//! Why retries are counted as on their way: with a guard in Redis, retries woken together
//! spent concurrently, and the ones refused were settled before the winner's allowed spend
//! came back: they saw nothing held and their refusals stood (4 to 26 of 30 valid requests
//! from one address got 429 with a `Retry-After` of the whole interval).
//! Regression: tests::concurrent_retries_wait_for_the_one_that_won

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// Shards of the table: attempts of different clients rarely share a lock.
const SHARDS: usize = 16;

/// How long a refused request waits for the attempts before it, at most.
pub const WAIT_AT_MOST: Duration = Duration::from_secs(2);

/// One shard of the table: the slots of the keys hashed to it.
type Shard = Mutex<HashMap<u64, Slot>>;

/// Attempts under way, by key (the guard's key hash).
#[derive(Debug)]
pub struct Attempts {
    shards: Box<[Shard]>,
}

/// The attempts of one key; it leaves the table when nothing is held, on its way or handed.
#[derive(Debug, Default)]
struct Slot {
    held: usize,
    pending: usize,
    retrying: usize,
    waiting: usize,
    handed: usize,
    settled: Arc<Notify>,
}

/// Where an attempt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its spend is on its way (`first`: counted as pending, else as retrying).
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

/// A refused attempt waiting: [`Woken::Retry`] when a request given back was handed to it,
/// [`Woken::Stands`] when nothing is under way any more.
#[derive(Debug)]
pub struct Wake<'a> {
    attempts: &'a Attempts,
    key: u64,
    settled: Arc<Notify>,
    notified: Pin<Box<OwnedNotified>>,
    done: bool,
}

/// How a wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// A request was given back to it: ask again (already counted as retrying).
    Retry,
    /// Nothing is under way: the refusal stands.
    Stands,
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
    /// comes back), or a retry after [`Woken::Retry`] (counted as retrying by then).
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
    /// returns a [`Wake`] if something is still under way for it to wait on.
    fn settle(
        &self,
        key: u64,
        from: State,
        to: State,
        given_back: bool,
        wait: bool,
    ) -> Option<Wake<'_>> {
        let mut shard = self.shard(key);
        let slot = shard.entry(key).or_default();
        match from {
            State::Asking { first: true } => slot.pending = slot.pending.saturating_sub(1),
            State::Asking { first: false } => slot.retrying = slot.retrying.saturating_sub(1),
            State::Holding => slot.held = slot.held.saturating_sub(1),
            State::Done => {}
        }
        if to == State::Holding {
            slot.held += 1;
        }
        if from == State::Holding && given_back && slot.waiting > slot.handed {
            // One request back: handed to one waiter, which may spend it.
            slot.handed += 1;
            slot.settled.notify_one();
        }
        if wait && slot.under_way() {
            slot.waiting += 1;
            let settled = Arc::clone(&slot.settled);
            return Some(Wake {
                attempts: self,
                key,
                notified: registered(&settled),
                settled,
                done: false,
            });
        }
        close_if_idle(&mut shard, key);
        None
    }
}

/// A wake-up on `settled`, registered now: taken under the lock every settling takes, so
/// none is missed.
fn registered(settled: &Arc<Notify>) -> Pin<Box<OwnedNotified>> {
    let mut notified = Box::pin(Arc::clone(settled).notified_owned());
    notified.as_mut().enable();
    notified
}

/// The slot of `key` a waiter on `settled` waits in, unless it closed (and maybe opened
/// anew, with another `settled`).
fn own_slot<'s>(
    shard: &'s mut HashMap<u64, Slot>,
    key: u64,
    settled: &Arc<Notify>,
) -> Option<&'s mut Slot> {
    shard
        .get_mut(&key)
        .filter(|s| Arc::ptr_eq(&s.settled, settled))
}

/// Removes the slot of `key` when nothing is under way, waking its waiters: their refusals
/// stand.
fn close_if_idle(shard: &mut HashMap<u64, Slot>, key: u64) {
    if shard.get(&key).is_some_and(|s| !s.under_way())
        && let Some(slot) = shard.remove(&key)
    {
        slot.settled.notify_waiters();
    }
}

// === impl Slot ===

impl Slot {
    /// Whether budget is held, a spend is on its way, or a request given back is handed.
    fn under_way(&self) -> bool {
        self.held > 0 || self.pending > 0 || self.retrying > 0 || self.handed > 0
    }
}

// === impl Attempt ===

impl<'a> Attempt<'a> {
    /// The attempt's spend was allowed: it holds budget until it settles.
    pub fn allowed(&mut self) {
        let from = self.state;
        self.state = State::Holding;
        self.attempts
            .settle(self.key, from, State::Holding, false, false);
    }

    /// The attempt's spend was refused: it holds nothing. A [`Wake`] for when a request may
    /// be back, or `None` when none may be (the refusal stands).
    pub fn refused(mut self) -> Option<Wake<'a>> {
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

// === impl Wake ===

impl Future for Wake<'_> {
    type Output = Woken;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Woken> {
        let this = &mut *self;
        loop {
            if this.notified.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let mut shard = this.attempts.shard(this.key);
            let Some(slot) = own_slot(&mut shard, this.key, &this.settled) else {
                // Closed: nothing was under way any more.
                this.done = true;
                return Poll::Ready(Woken::Stands);
            };
            if slot.handed > 0 {
                slot.handed -= 1;
                slot.waiting = slot.waiting.saturating_sub(1);
                // Counted as on its way from now: the slot cannot close before it asks.
                slot.retrying += 1;
                this.done = true;
                return Poll::Ready(Woken::Retry);
            }
            // A wake-up meant for a waiter that left: wait on.
            this.notified = registered(&this.settled);
        }
    }
}

impl Drop for Wake<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut shard = self.attempts.shard(self.key);
        if let Some(slot) = own_slot(&mut shard, self.key, &self.settled) {
            slot.waiting = slot.waiting.saturating_sub(1);
            // A request handed to this waiter passes to another (tokio hands its wake-up on);
            // with nobody left, it is nobody's.
            slot.handed = slot.handed.min(slot.waiting);
        }
        close_if_idle(&mut shard, self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_secs(1);

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
        assert_eq!(tokio::time::timeout(SOON, wake).await, Ok(Woken::Retry));
        drop(a.begin(7, false));
        drop(second);
        assert_eq!(a.keys(), 0, "the last attempt leaves no entry");
    }

    #[tokio::test]
    async fn a_refusal_waits_while_a_spend_is_on_its_way_then_stands() {
        let a = Attempts::default();
        let pending = a.begin(7, true);
        let wake = a
            .begin(7, true)
            .refused()
            .expect("a first try is still asking");
        // The last spend on its way refused too: nothing under way; the refusals stand.
        assert!(pending.refused().is_none());
        assert_eq!(tokio::time::timeout(SOON, wake).await, Ok(Woken::Stands));
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
            tokio::time::timeout(Duration::from_millis(50), &mut wake)
                .await
                .is_err(),
            "a failure gives nothing back while budget is still held"
        );
        drop(second);
        assert_eq!(tokio::time::timeout(SOON, wake).await, Ok(Woken::Stands));
        assert_eq!(a.keys(), 0);
    }

    /// A request given back goes to one waiter; the others wait for its retry, however long
    /// its spend takes to come back, and the next request it gives back goes to one of them.
    #[tokio::test]
    async fn concurrent_retries_wait_for_the_one_that_won() {
        let a = Attempts::default();
        let mut holder = a.begin(7, true);
        holder.allowed();
        let mut w1 = a.begin(7, true).refused().expect("held");
        let mut w2 = a.begin(7, true).refused().expect("held");
        holder.giving_back();
        drop(holder);
        let (woken, mut other) = tokio::select! {
            w = &mut w1 => (w, w2),
            w = &mut w2 => (w, w1),
        };
        assert_eq!(woken, Woken::Retry);
        // The retry's spend is on its way (a Redis round trip): the other waits.
        let mut retry = a.begin(7, false);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut other)
                .await
                .is_err(),
            "woken with nothing handed to it"
        );
        retry.allowed();
        retry.giving_back();
        drop(retry);
        assert_eq!(tokio::time::timeout(SOON, other).await, Ok(Woken::Retry));
        drop(a.begin(7, false));
        assert_eq!(a.keys(), 0);
    }

    /// A waiter that leaves passes a request handed to it on to another.
    #[tokio::test]
    async fn a_request_handed_to_a_waiter_that_left_goes_to_another() {
        let a = Attempts::default();
        let mut holder = a.begin(7, true);
        holder.allowed();
        let w1 = a.begin(7, true).refused().expect("held");
        let w2 = a.begin(7, true).refused().expect("held");
        holder.giving_back();
        drop(holder);
        drop(w1);
        assert_eq!(tokio::time::timeout(SOON, w2).await, Ok(Woken::Retry));
        drop(a.begin(7, false));
        assert_eq!(a.keys(), 0);
        // With nobody left, a request given back is nobody's: the slot closes.
        let mut holder = a.begin(7, true);
        holder.allowed();
        let w = a.begin(7, true).refused().expect("held");
        holder.giving_back();
        drop(holder);
        drop(w);
        assert_eq!(a.keys(), 0);
    }
}
