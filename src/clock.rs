//! The gateway's clock: the system's, or a manual one a test moves. Every time a decision
//! depends on (token `exp`, `nbf` and `iat`, the verified-token and introspection caches' view
//! of expiry, rate-limit budgets, the identity assertion's lifetime) is read from the
//! snapshot's [`Clock`], so tests that wait for an expiry or a refill move it instead of
//! sleeping.
//!
//! Invariants: a manual clock only moves forward, and only when told; both of its readings
//! (wall and monotonic) move together.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A clock; cheap to clone (clones share a manual clock's time).
#[derive(Clone, Debug, Default)]
pub struct Clock(Option<Arc<Manual>>);

/// A manual clock's time.
#[derive(Debug)]
struct Manual {
    /// Unix time, nanoseconds.
    unix_nanos: AtomicU64,
    /// Nanoseconds since the clock was made.
    mono_nanos: AtomicU64,
}

/// What the system clock's monotonic readings count from.
fn epoch() -> std::time::Instant {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

// === impl Clock ===

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A manual clock reading `unix` (seconds since the epoch) until moved.
    pub fn manual(unix: u64) -> Self {
        Self(Some(Arc::new(Manual {
            unix_nanos: AtomicU64::new(unix.saturating_mul(1_000_000_000)),
            mono_nanos: AtomicU64::new(0),
        })))
    }

    /// A manual clock at the system's time now.
    pub fn manual_now() -> Self {
        Self::manual(Self::system().unix_secs())
    }

    /// Moves a manual clock forward; the system clock moves by itself.
    pub fn advance(&self, by: Duration) {
        if let Some(m) = &self.0 {
            let n = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            m.unix_nanos.fetch_add(n, Ordering::SeqCst);
            m.mono_nanos.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// Whether it is a manual clock.
    pub fn is_manual(&self) -> bool {
        self.0.is_some()
    }

    /// Seconds since the Unix epoch.
    pub fn unix_secs(&self) -> u64 {
        match &self.0 {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            Some(m) => m.unix_nanos.load(Ordering::SeqCst) / 1_000_000_000,
        }
    }

    /// Time from now until the start of the Unix second `unix` (zero once there).
    ///
    /// Why: waits computed from whole seconds (`unix - unix_secs()`) woke up to a second
    /// late, so a tunnel closed at its credential's expiry relayed for most of a second more.
    /// Regression: tests::time_until_counts_from_the_fraction_of_the_second
    pub fn time_until(&self, unix: u64) -> Duration {
        let now = match &self.0 {
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
            Some(m) => Duration::from_nanos(m.unix_nanos.load(Ordering::SeqCst)),
        };
        Duration::from_secs(unix).saturating_sub(now)
    }

    /// Monotonic time since a fixed point (the process's first reading, or the manual clock's
    /// creation).
    pub fn monotonic(&self) -> Duration {
        match &self.0 {
            None => epoch().elapsed(),
            Some(m) => Duration::from_nanos(m.mono_nanos.load(Ordering::SeqCst)),
        }
    }
}

/// `start + timeout`, or, for a timeout too long to add, a deadline 30 years on: as good as
/// none (tokio's `timeout` does the same).
pub fn deadline_after(
    start: tokio::time::Instant,
    timeout: std::time::Duration,
) -> tokio::time::Instant {
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + std::time::Duration::from_secs(30 * 365 * 86_400))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(1_000);
        let shared = c.clone();
        assert_eq!(c.unix_secs(), 1_000);
        assert_eq!(c.monotonic(), Duration::ZERO);
        shared.advance(Duration::from_millis(1_500));
        assert_eq!(c.unix_secs(), 1_001);
        assert_eq!(c.monotonic(), Duration::from_millis(1_500));
        assert!(c.is_manual() && !Clock::system().is_manual());
    }

    #[test]
    fn time_until_counts_from_the_fraction_of_the_second() {
        let c = Clock::manual(1_000);
        c.advance(Duration::from_millis(700));
        assert_eq!(c.time_until(1_001), Duration::from_millis(300));
        assert_eq!(c.time_until(1_000), Duration::ZERO);
        assert_eq!(c.time_until(1_003), Duration::from_millis(2_300));
    }

    #[test]
    fn system_clock_reads_the_system() {
        let c = Clock::system();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(c.unix_secs().abs_diff(wall) <= 1);
        let a = c.monotonic();
        assert!(c.monotonic() >= a);
    }
}

/// When something last happened (bytes moved through a tunnel, a piece of a request body
/// arrived), readable from another task without a lock: the milliseconds from its start in
/// one atomic.
#[derive(Debug)]
pub struct Activity {
    start: tokio::time::Instant,
    /// Milliseconds from `start` to the latest `touch`.
    last_ms: AtomicU64,
}

impl Activity {
    /// Started `start`, nothing happened since.
    pub fn since(start: tokio::time::Instant) -> Self {
        Self {
            start,
            last_ms: AtomicU64::new(0),
        }
    }

    /// When it started.
    pub fn start(&self) -> tokio::time::Instant {
        self.start
    }

    /// Something happened now.
    pub fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When it last happened (the start, if nothing has).
    pub fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}
