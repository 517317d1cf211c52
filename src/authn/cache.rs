//! The verified-token cache: verification results keyed by a SHA-256 digest of the token (never
//! the token itself), bounded in entries and in estimated memory.
//!
//! Invariants: an entry is never served at or after the token's `exp` (checked on every hit,
//! not only by the cache's own expiry), nor after `revalidate_after`, nor once the key that
//! verified it has been dropped from its key set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;

use super::jwt::keys::VerifyKey;
use super::jwt::verify::TokenError;
use super::principal::Principal;

/// A token digest.
pub type Digest = [u8; 32];

/// One cached verification.
#[derive(Debug)]
pub struct Entry {
    /// Who the token speaks for, or why it was refused (introspection caches inactive answers).
    pub result: Result<Arc<Principal>, TokenError>,
    /// Unix second from which the token is no longer accepted (`exp` plus leeway).
    pub valid_until: Option<u64>,
    /// When it was verified.
    verified_at: Instant,
    /// The key that verified it, if one did.
    key: Option<Arc<VerifyKey>>,
}

/// A bounded cache of verified credentials.
#[derive(Clone)]
pub struct TokenCache {
    inner: Option<Cache<Digest, Arc<Entry>>>,
    revalidate_after: Duration,
}

struct Expiry {
    revalidate_after: Duration,
}

// === impl Entry ===

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
            verified_at: Instant::now(),
            key,
        }
    }

    /// A refusal remembered until `valid_until`.
    pub fn refused(error: TokenError, valid_until: u64) -> Self {
        Self {
            result: Err(error),
            valid_until: Some(valid_until),
            verified_at: Instant::now(),
            key: None,
        }
    }

    fn weight(&self) -> usize {
        self.result.as_ref().map_or(64, |p| p.weight())
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
                revalidate_after,
            };
        }
        // Why: moka bounds one weight. Each entry weighs at least max_bytes / max_entries, so
        // the byte bound also bounds the entry count.
        let floor = u32::try_from((max_bytes / max_entries).max(1)).unwrap_or(u32::MAX);
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(move |_k: &Digest, e: &Arc<Entry>| {
                u32::try_from(e.weight()).unwrap_or(u32::MAX).max(floor)
            })
            .expire_after(Expiry { revalidate_after })
            .build();
        Self {
            inner: Some(inner),
            revalidate_after,
        }
    }

    /// The digest a token is cached under.
    pub fn digest(token: &str) -> Digest {
        crate::secret::sha256(token.as_bytes())
    }

    /// A still-valid entry for the digest.
    pub fn get(&self, digest: &Digest, now: u64) -> Option<Arc<Entry>> {
        let cache = self.inner.as_ref()?;
        let e = cache.get(digest)?;
        let fresh = e.valid_until.is_none_or(|t| now < t)
            && e.verified_at.elapsed() < self.revalidate_after
            && !e.key.as_ref().is_some_and(|k| k.is_revoked());
        if fresh {
            Some(e)
        } else {
            cache.invalidate(digest);
            None
        }
    }

    /// Remembers a verification.
    pub fn insert(&self, digest: Digest, entry: Entry) {
        if let Some(c) = &self.inner {
            c.insert(digest, Arc::new(entry));
        }
    }

    /// Entries held (approximate).
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, Cache::entry_count)
    }

    /// Whether it holds nothing (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl moka::Expiry<Digest, Arc<Entry>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Digest,
        e: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
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
        Arc::new(Principal {
            id: "u".into(),
            kind: PrincipalKind::User,
            authenticator: "a".into(),
            issuer: None,
            scopes: Box::default(),
            roles: Box::default(),
            tenant: None,
            api_key_id: None,
            claims: serde_json::Map::new(),
            expires_at: None,
        })
    }

    #[test]
    fn never_served_at_or_after_exp() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let c = TokenCache::new(10, 1 << 20, Duration::from_secs(60));
        let d = TokenCache::digest("t");
        c.insert(d, Entry::new(principal(), Some(now + 30), None));
        assert!(c.get(&d, now + 29).is_some());
        assert!(c.get(&d, now + 30).is_none());
        assert!(c.get(&d, now + 29).is_none(), "an expired entry is dropped");
    }

    #[test]
    fn revalidated_after_interval() {
        let c = TokenCache::new(10, 1 << 20, Duration::ZERO);
        let d = TokenCache::digest("t");
        c.insert(d, Entry::new(principal(), None, None));
        assert!(c.get(&d, 0).is_none());
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let c = TokenCache::new(0, 1 << 20, Duration::from_secs(60));
        let d = TokenCache::digest("t");
        c.insert(d, Entry::new(principal(), None, None));
        assert!(c.get(&d, 0).is_none());
    }

    #[test]
    fn digest_is_not_the_token() {
        let d = TokenCache::digest("secret-token");
        assert_ne!(&d[..], b"secret-token");
        assert_eq!(d, TokenCache::digest("secret-token"));
    }
}
