//! The verified-token cache: verification results keyed by a seeded 64-bit hash of the token,
//! bounded in entries and in estimated memory (tokens included).
//!
//! Invariants: a hit requires the presented token to equal the cached one, compared in constant
//! time, so a hash collision is a miss and never another token's principal; an entry is never
//! served at or after the token's `exp` (checked on every hit, not only by the cache's own
//! expiry), nor after `revalidate_after`, nor once the key that verified it has been dropped
//! from its key set.
//!
//! Why not a cryptographic digest as the key: SHA-256 of a kilobyte token took 0.39 µs, a
//! quarter of a whole cached decision; foldhash plus the comparison takes a tenth of that. The
//! cost is holding verified tokens in memory for up to `revalidate_after`, as Envoy's
//! `jwt_authn` cache does.

use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::jwt::keys::VerifyKey;
use super::jwt::verify::TokenError;
use super::principal::Principal;

/// What an entry costs besides its token and principal's variable parts: the cache's own
/// bookkeeping (hash table slot, access and write order nodes, expiry timer), the entry, the
/// principal struct and its claims map's first node. Measured: a cache filled past `max_bytes`
/// grows the process by `max_bytes` within 20%, for minimal and for typical tokens.
/// Regression: tests (it) memory::token_cache_max_bytes_bounds_real_memory
const ENTRY_OVERHEAD: usize = 1150;

/// What the cache expects a principal's derived values (its CEL view, its rendered identity
/// headers; [`super::principal::Derived`]) to take, learned from the principals it inserted.
///
/// Why learned: those values are made after the insert, by the rule the request reaches, and
/// moka weighs an entry once; by the next insert, the last principal's are made. Counting
/// nothing for them let a cache behind CEL rules and identity headers grow 1.4 times past its
/// bound. Regression: tests (it) memory::token_cache_max_bytes_bounds_real_memory
#[derive(Default)]
struct Reserve {
    /// The principal inserted last.
    last: arc_swap::ArcSwapOption<Principal>,
    /// A moving average of what the principals' derived values took (1/8 per insert).
    bytes: std::sync::atomic::AtomicUsize,
}

/// The cache key: a seeded hash of the token.
type Key = u64;

/// One cached verification.
pub struct Entry {
    /// Who the token speaks for, or why it was refused (introspection caches inactive answers).
    pub result: Result<Arc<Principal>, TokenError>,
    /// Unix second from which the token is no longer accepted (`exp` plus leeway).
    pub valid_until: Option<u64>,
    /// The token itself, compared on every hit.
    token: crate::secret::Secret<Box<[u8]>>,
    /// When it was verified.
    verified_at: Instant,
    /// The key that verified it, if one did.
    key: Option<Arc<VerifyKey>>,
    /// What its principal's derived values are expected to take ([`Reserve`]).
    reserve: usize,
    /// Whether the token is token68 ([`super::credential::is_token68`]): only then may a
    /// bearer token whose syntax was not checked hit it ([`TokenCache::get_bearer`]).
    token68: bool,
}

/// A bounded cache of verified credentials.
#[derive(Clone)]
pub struct TokenCache {
    inner: Option<Cache<Key, Arc<Entry>>>,
    hasher: foldhash::quality::RandomState,
    revalidate_after: Duration,
    reserve: Arc<Reserve>,
}

struct Expiry {
    revalidate_after: Duration,
}

// === impl Entry ===

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a live credential: never printed.
        f.debug_struct("Entry")
            .field("result", &self.result)
            .field("valid_until", &self.valid_until)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// A fresh entry.
    pub fn new(
        principal: Arc<Principal>,
        valid_until: Option<u64>,
        key: Option<Arc<VerifyKey>>,
    ) -> Self {
        Self {
            result: Ok(principal),
            valid_until,
            token: crate::secret::Secret::default(),
            verified_at: Instant::now(),
            key,
            reserve: 0,
            token68: false,
        }
    }

    /// A refusal remembered until `valid_until`.
    pub fn refused(error: TokenError, valid_until: u64) -> Self {
        Self {
            result: Err(error),
            valid_until: Some(valid_until),
            token: crate::secret::Secret::default(),
            verified_at: Instant::now(),
            key: None,
            reserve: 0,
            token68: false,
        }
    }

    fn weight(&self) -> usize {
        ENTRY_OVERHEAD
            + self.token.expose().len()
            + self.result.as_ref().map_or(64, |p| p.weight())
            + self.reserve
    }
}

// === impl TokenCache ===

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.as_ref().map(Cache::entry_count))
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `max_entries` entries and about `max_bytes` bytes; 0 entries turns it
    /// off.
    pub fn new(max_entries: u64, max_bytes: u64, revalidate_after: Duration) -> Self {
        if max_entries == 0 || max_bytes == 0 {
            return Self {
                inner: None,
                hasher: foldhash::quality::RandomState::default(),
                revalidate_after,
                reserve: Arc::default(),
            };
        }
        // Why: moka bounds one weight. Each entry weighs at least max_bytes / max_entries, so
        // the byte bound also bounds the entry count.
        let floor = u32::try_from((max_bytes / max_entries).max(1)).unwrap_or(u32::MAX);
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_k: &Key, e: &Arc<Entry>| {
                u32::try_from(e.weight()).unwrap_or(u32::MAX).max(floor)
            })
            .expire_after(Expiry { revalidate_after })
            .build();
        Self {
            inner: Some(inner),
            hasher: foldhash::quality::RandomState::default(),
            revalidate_after,
            reserve: Arc::default(),
        }
    }

    fn key(&self, token: &[u8]) -> Key {
        self.hasher.hash_one(token)
    }

    /// A still-valid entry for exactly this token.
    pub fn get(&self, token: &str, now: u64) -> Option<Arc<Entry>> {
        self.lookup(token.as_bytes(), now)
    }

    /// A still-valid entry for exactly these bytes, an `Authorization: Bearer` token whose
    /// syntax is not checked yet: a hit only on a token68 entry, which vouches for it (the
    /// bytes are the same). Regression: tests::an_unchecked_bearer_hits_only_a_token68_entry
    pub fn get_bearer(&self, token: &[u8], now: u64) -> Option<Arc<Entry>> {
        self.lookup(token, now).filter(|e| e.token68)
    }

    fn lookup(&self, token: &[u8], now: u64) -> Option<Arc<Entry>> {
        let cache = self.inner.as_ref()?;
        let key = self.key(token);
        let e = cache.get(&key)?;
        if !crate::secret::ct_eq(e.token.expose(), token) {
            // Another token with the same hash: a miss (its entry stays).
            return None;
        }
        let fresh = e.valid_until.is_none_or(|t| now < t)
            && e.verified_at.elapsed() < self.revalidate_after
            && !e.key.as_ref().is_some_and(|k| k.is_revoked());
        if fresh {
            Some(e)
        } else {
            cache.invalidate(&key);
            None
        }
    }

    /// Remembers a verification of `token`.
    pub fn insert(&self, token: &str, mut entry: Entry) {
        if let Some(c) = &self.inner {
            entry.token = crate::secret::Secret::new(token.as_bytes().into());
            entry.token68 = super::credential::is_token68(token.as_bytes());
            if let Ok(p) = &entry.result {
                entry.reserve = self.reserve.learn(Arc::clone(p));
            }
            c.insert(self.key(token.as_bytes()), Arc::new(entry));
        }
    }

    /// Entries held, once the writes moka has queued are applied: it counts them in its
    /// housekeeping, so a token verified a moment ago read as none until that ran.
    ///
    /// Why: `portcullis_token_cache_entries` read 0 right after a verified request, and 1
    /// only seconds later. Regression: tests::len_counts_an_entry_at_once
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

// === impl Reserve ===

impl Reserve {
    /// Takes the derived values of the principal inserted before `next` into the average and
    /// returns it, for `next`.
    fn learn(&self, next: Arc<Principal>) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(last) = self.last.swap(Some(next)) else {
            return 0;
        };
        // Why 7/5: the values' own estimates count their allocations in 16-byte steps, but
        // the allocator's size classes past 128 bytes step by a quarter of a power of two
        // (jemalloc's) and a CEL map's table is sized by hashbrown's load factor. Measured
        // (a cache behind identity headers and CEL filled past 12 MiB, three runs each): 5/4
        // grew the process 1.14x to 1.21x its bound, 3/2 0.82x to 1.02x, 7/5 0.91x to 1.13x.
        // Regression: tests (it) memory::token_cache_max_bytes_bounds_real_memory
        let seen = last.derived.bytes() * 7 / 5;
        let old = self.bytes.load(Relaxed);
        // Concurrent inserts may lose one another's step: an estimate either way.
        let new = old - old / 8 + seen / 8;
        self.bytes.store(new, Relaxed);
        new
    }
}

impl moka::Expiry<Key, Arc<Entry>> for Expiry {
    fn expire_after_create(&self, _key: &Key, e: &Arc<Entry>, _now: Instant) -> Option<Duration> {
        let until_exp = e.valid_until.map(|t| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Duration::from_secs(t.saturating_sub(now))
        });
        Some(until_exp.map_or(self.revalidate_after, |d| d.min(self.revalidate_after)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::principal::PrincipalKind;

    fn principal() -> Arc<Principal> {
        Arc::new(crate::testing::principal("u", PrincipalKind::User))
    }

    #[test]
    fn never_served_at_or_after_exp() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let c = TokenCache::new(10, 1 << 20, Duration::from_secs(60));
        c.insert("t", Entry::new(principal(), Some(now + 30), None));
        assert!(c.get("t", now + 29).is_some());
        assert!(c.get("t", now + 30).is_none());
        assert!(
            c.get("t", now + 29).is_none(),
            "an expired entry is dropped"
        );
    }

    #[test]
    fn revalidated_after_interval() {
        let c = TokenCache::new(10, 1 << 20, Duration::ZERO);
        c.insert("t", Entry::new(principal(), None, None));
        assert!(c.get("t", 0).is_none());
    }

    #[test]
    fn len_counts_an_entry_at_once() {
        let c = TokenCache::new(10, 1 << 20, Duration::from_secs(60));
        c.insert("t", Entry::new(principal(), None, None));
        assert_eq!(c.len(), 1);
        c.insert("u", Entry::new(principal(), None, None));
        assert_eq!(c.len(), 2);
    }

    /// A flood of refused tokens (made-up opaque tokens, inactive by introspection) pushes out
    /// only refusals, never the verified principals of users who keep coming back.
    #[test]
    fn refusals_never_push_out_verified_principals() {
        // A tester's shape: 2 MiB, twenty users' tokens used 20 times, then 5,880 made-up
        // 4 KB tokens with the users' requests among them.
        let c = TokenCache::new(100_000, 2 << 20, Duration::from_secs(60));
        let users: Vec<String> = (0..20).map(|i| format!("user-token-{i}")).collect();
        for u in &users {
            c.insert(u, Entry::new(principal(), None, None));
            for _ in 0..20 {
                assert!(c.get(u, 0).is_some());
            }
        }
        let mut missed = 0;
        for j in 0..5880 {
            let junk = format!("junk-{j}-{}", "x".repeat(4000));
            c.insert(&junk, Entry::refused(TokenError::Inactive, u64::MAX));
            if j % 49 == 0 {
                let u = &users[j / 49 % users.len()];
                if c.get(u, 0).is_none() {
                    missed += 1;
                    c.insert(u, Entry::new(principal(), None, None));
                }
            }
        }
        assert_eq!(missed, 0, "users' principals pushed out by refusals");
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let c = TokenCache::new(0, 1 << 20, Duration::from_secs(60));
        c.insert("t", Entry::new(principal(), None, None));
        assert!(c.get("t", 0).is_none());
    }

    #[test]
    fn a_hit_needs_the_same_token() {
        let c = TokenCache::new(10, 1 << 20, Duration::from_secs(60));
        c.insert("token-a", Entry::new(principal(), None, None));
        assert!(c.get("token-a", 0).is_some());
        assert!(c.get("token-b", 0).is_none());
        // Forge a collision: an entry for another token stored under token-a's key.
        let inner = c.inner.as_ref().unwrap();
        let mut forged = Entry::new(principal(), None, None);
        forged.token = crate::secret::Secret::new(b"token-b".to_vec().into());
        inner.insert(c.key(b"token-a"), Arc::new(forged));
        assert!(c.get("token-a", 0).is_none(), "a colliding entry is a miss");
    }

    #[test]
    fn an_unchecked_bearer_hits_only_a_token68_entry() {
        let c = TokenCache::new(10, 1 << 20, Duration::from_secs(60));
        c.insert("abc.def-_~+/==", Entry::new(principal(), None, None));
        // Verified from a header or cookie source, which do not ask for token68.
        c.insert("a b,c", Entry::new(principal(), None, None));
        assert!(c.get_bearer(b"abc.def-_~+/==", 0).is_some());
        assert!(c.get("a b,c", 0).is_some());
        assert!(
            c.get_bearer(b"a b,c", 0).is_none(),
            "a bearer token that is not token68 is checked, and refused, whatever is cached"
        );
        assert!(c.get_bearer(b"abc.def", 0).is_none());
    }

    /// A derived value of the given weight.
    struct Made(usize);

    impl crate::authn::principal::Weigh for Made {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn derived_values_are_reserved_in_later_entries() {
        let c = TokenCache::new(1000, 1 << 24, Duration::from_secs(60));
        for i in 0..60 {
            let p = principal();
            c.insert(&format!("t{i:02}"), Entry::new(Arc::clone(&p), None, None));
            // What a rule makes of it once the entry is in.
            assert!(p.derived.get_or_init(|| Made(1000)).is_some());
        }
        let first = c.get("t00", 0).unwrap();
        let last = c.get("t59", 0).unwrap();
        assert_eq!(first.reserve, 0, "nothing learned yet");
        // The average approaches 7/5 of the 1,016 bytes each value took (its box included).
        assert!((1330..=1422).contains(&last.reserve), "{}", last.reserve);
        assert_eq!(last.weight(), first.weight() + last.reserve);
    }
}
