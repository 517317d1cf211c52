//! Remote key sets: a JWKS URL, or OIDC discovery leading to one.
//!
//! Invariants: a set never fetched verifies nothing and decides nothing (its provider answers
//! 503 for a token it might verify, and `/readyz` waits for it unless it is optional); the last
//! good key set is kept whenever a fetch fails, times out, returns garbage or an empty set; a token with an unknown `kid` triggers at most one refetch at a time and at
//! most one per cooldown; nothing a token says (`jku`, `x5u`, its issuer before it is matched
//! to a configured provider) ever leads to a fetch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::Uri;

use super::keys::{KeySet, parse_jwks};
use crate::authn::http_client::{FetchError, HttpClient, is_loopback, max_age};
use crate::config::raw::RawFetch;

/// Where the keys are fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteSource {
    /// A JWKS document.
    Jwks(Uri),
    /// An OIDC discovery document naming the JWKS.
    Discovery(Uri),
}

/// A fetched key set, refreshed in the background.
pub struct RemoteKeys {
    source: RemoteSource,
    issuer: Arc<str>,
    client: HttpClient,
    settings: RawFetch,
    keys: ArcSwap<KeySet>,
    has_keys: AtomicBool,
    started: AtomicBool,
    created: Instant,
    refetch: Arc<tokio::sync::Mutex<Option<Instant>>>,
    /// One fetch at a time, so an older answer never overwrites a newer one.
    fetching: tokio::sync::Mutex<()>,
    /// CA file and a digest of its contents, when one is configured.
    ca: Option<(std::path::PathBuf, [u8; 32])>,
    /// Successful fetches.
    pub fetches_ok: AtomicU64,
    /// Failed fetches.
    pub fetches_failed: AtomicU64,
    /// Unix seconds of the last successful fetch (0: never).
    pub last_success: AtomicU64,
}

// === impl RemoteSource ===

impl RemoteSource {
    /// Parses and checks a URL: https, or http to loopback only.
    ///
    /// Why the URL is shown redacted, and credentials in it refused: a key URL written with
    /// `user:pass@` passed, and its errors showed the password (`check`, `POST /reload`,
    /// `GET /config`, the log). Regression: jwt::tests::key_urls_with_credentials_are_refused_unshown
    pub fn parse_url(url: &str) -> Result<Uri, String> {
        let shown = crate::secret::redacted_url(url);
        if crate::secret::may_hold_credentials(url) {
            return Err(format!(
                "`{shown}`: credentials in the URL are refused (an `@` a path or query needs is written `%40`)"
            ));
        }
        // A port that is not a number is no URL: `https://u:pa/ss@host` (a password holding
        // `/` or `?`) would read `pa` as one, and fetch from the host `u`.
        let (authority, _) = crate::secret::split_authority(url);
        let port = match authority.rfind(']') {
            Some(end) => authority[end + 1..].strip_prefix(':'),
            None => authority.rsplit_once(':').map(|(_, p)| p),
        };
        if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return Err(format!("`{shown}` is not a valid URL"));
        }
        if !crate::config::port_fits(authority) {
            return Err(format!(
                "`{shown}`: the port must be a number from 0 to 65535"
            ));
        }
        let uri: Uri = url
            .parse()
            .map_err(|_| format!("`{shown}` is not a valid URL"))?;
        match uri.scheme_str() {
            Some("https") => Ok(uri),
            Some("http") if is_loopback(&uri) => Ok(uri),
            Some("http") => Err(format!(
                "`{shown}`: plain http is only allowed to loopback addresses; use https"
            )),
            _ => Err(format!("`{shown}` must be an https URL")),
        }
    }

    /// The discovery document's URL for an issuer or discovery URL.
    pub fn discovery_url(url: &str) -> Result<Uri, String> {
        if url.ends_with("/.well-known/openid-configuration") {
            Self::parse_url(url)
        } else {
            Self::parse_url(&format!(
                "{}/.well-known/openid-configuration",
                url.trim_end_matches('/')
            ))
        }
    }
}

// === impl RemoteKeys ===

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("source", &self.source)
            .field("keys", &self.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl RemoteKeys {
    /// A key set not yet fetched.
    pub fn new(
        source: RemoteSource,
        issuer: Arc<str>,
        client: HttpClient,
        settings: RawFetch,
        ca: Option<(std::path::PathBuf, [u8; 32])>,
    ) -> Self {
        Self {
            source,
            issuer,
            client,
            settings,
            keys: ArcSwap::from_pointee(KeySet::default()),
            has_keys: AtomicBool::new(false),
            started: AtomicBool::new(false),
            created: Instant::now(),
            refetch: Arc::new(tokio::sync::Mutex::new(None)),
            fetching: tokio::sync::Mutex::new(()),
            ca,
            fetches_ok: AtomicU64::new(0),
            fetches_failed: AtomicU64::new(0),
            last_success: AtomicU64::new(0),
        }
    }

    /// This set under other fetch `settings` (a tuning change): the keys fetched so far, and
    /// the state of the refetch cooldown, are kept.
    ///
    /// Why: any change to `fetch` made a new set that had never fetched, so a tuning edit
    /// (a timeout, the refresh interval) made while the IdP was down turned every token of
    /// the issuer into a 503 until it answered again.
    /// Regression: tests (it) jwt::a_fetch_tuning_change_keeps_the_keys_held
    pub fn retuned(&self, client: HttpClient, settings: RawFetch) -> Self {
        Self {
            source: self.source.clone(),
            issuer: Arc::clone(&self.issuer),
            client,
            settings,
            keys: ArcSwap::new(self.keys.load_full()),
            has_keys: AtomicBool::new(self.has_keys()),
            started: AtomicBool::new(false),
            created: self.created,
            // Shared: an unknown `kid` right after the reload waits out the cooldown.
            refetch: Arc::clone(&self.refetch),
            fetching: tokio::sync::Mutex::new(()),
            ca: self.ca.clone(),
            fetches_ok: AtomicU64::new(self.fetches_ok.load(Ordering::Relaxed)),
            fetches_failed: AtomicU64::new(self.fetches_failed.load(Ordering::Relaxed)),
            last_success: AtomicU64::new(self.last_success.load(Ordering::Relaxed)),
        }
    }

    /// Whether this set fetches from `source` for `issuer` under the CA `ca` (its settings
    /// apart).
    pub fn same_origin(
        &self,
        source: &RemoteSource,
        issuer: &str,
        ca: Option<&(std::path::PathBuf, [u8; 32])>,
    ) -> bool {
        self.source == *source && *self.issuer == *issuer && self.ca.as_ref() == ca
    }

    /// Whether this set can be carried into a new snapshot for the same settings.
    pub fn same_source(
        &self,
        source: &RemoteSource,
        issuer: &str,
        settings: &RawFetch,
        ca: Option<&(std::path::PathBuf, [u8; 32])>,
    ) -> bool {
        self.same_origin(source, issuer, ca) && self.settings == *settings
    }

    /// The digest of the CA file it fetches under, when it has one.
    pub fn ca_digest(&self) -> Option<&[u8; 32]> {
        self.ca.as_ref().map(|(_, digest)| digest)
    }

    /// The current keys.
    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// Whether a key set was ever fetched.
    pub fn has_keys(&self) -> bool {
        self.has_keys.load(Ordering::Acquire)
    }

    /// Whether `fetch.startup_timeout` has passed since this set was created (readiness
    /// stops waiting for an optional source then).
    pub fn startup_timed_out(&self) -> bool {
        self.created.elapsed() >= self.settings.startup_timeout
    }

    /// Starts the background refresh (once). The task ends when the last snapshot holding this
    /// key set is gone.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = weak.upgrade() else { return };
                let wait = match this.fetch().await {
                    Ok(next) => next,
                    Err(_) => this.settings.retry,
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Called for a token whose `kid` is unknown: refetches unless another refetch is running
    /// (then waits for it) or one ran within the cooldown; waits within `budget` (`None`, the
    /// proxy door: for as long as the fetch takes, each of its requests bounded by
    /// `fetch.timeout`). The caller then looks at the keys held, whatever came of it.
    ///
    /// Why: at the Envoy doors a passed deadline answers UNAVAILABLE, which Envoy's
    /// `failure_mode_allow: true` turns into an allow: a forged token with a new `kid`, sent
    /// while the key source was slow, waited out the door's deadline and was let through. The
    /// wait ends within the request's budget; the token is then judged on the keys at hand.
    /// Regression: tests (it)
    /// jwt::an_unknown_kid_during_a_slow_refetch_is_refused_within_the_door_deadline
    ///
    /// Why no budget at the proxy door: a shorter wait than the fetch refused the tokens of a
    /// rotation while the new keys were on their way (a discovery document and a key set, two
    /// requests, each its own `fetch.timeout`; a fetch already under way waited for first).
    /// Regression: tests (it) jwt::the_proxy_waits_out_a_rotations_fetch
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>, budget: Option<Duration>) {
        let this = Arc::clone(self);
        let wait = async move {
            let mut last = Arc::clone(&this.refetch).lock_owned().await;
            // Within the cooldown: the refetch we queued behind, or an earlier one.
            if let Some(at) = *last
                && at.elapsed() < this.settings.unknown_kid_cooldown
            {
                return;
            }
            // Why: its own task, holding the lock: a caller whose budget ends must not cancel
            // the fetch, or the next unknown `kid` would start another at once, and the
            // cooldown would never hold.
            let fetch = tokio::spawn(async move {
                let _ = this.fetch().await;
                *last = Some(Instant::now());
            });
            let _ = fetch.await;
        };
        match budget {
            Some(budget) => {
                let _ = tokio::time::timeout(budget, wait).await;
            }
            None => wait.await,
        }
    }

    /// Fetches once; on success swaps in the new set and returns when to refresh next.
    pub async fn fetch(&self) -> Result<Duration, FetchError> {
        let _one_at_a_time = self.fetching.lock().await;
        let result = self.fetch_inner().await;
        match &result {
            Ok(_) => {
                self.fetches_ok.fetch_add(1, Ordering::Relaxed);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.last_success.store(now, Ordering::Relaxed);
            }
            Err(e) => {
                self.fetches_failed.fetch_add(1, Ordering::Relaxed);
                // Which source of the issuer's failed (it may have several), without what a URL
                // may carry that is a secret: user info and query.
                let (kind, u) = match &self.source {
                    RemoteSource::Jwks(u) => ("jwks_url", u),
                    RemoteSource::Discovery(u) => ("oidc_discovery", u),
                };
                let source = format!(
                    "{kind} {}://{}{}{}",
                    u.scheme_str().unwrap_or("https"),
                    u.host().unwrap_or_default(),
                    u.port().map(|p| format!(":{p}")).unwrap_or_default(),
                    u.path()
                );
                // Why two texts: "keeping the last good keys" was logged before any key was
                // ever fetched, when there are none and its tokens are refused (503).
                if self.has_keys() {
                    tracing::warn!(issuer = &*self.issuer, source = %source, error = %e, "Key fetch failed; keeping the last good keys");
                } else {
                    tracing::warn!(issuer = &*self.issuer, source = %source, error = %e, "Key fetch failed; no keys yet: this issuer's tokens get 503 authentication_unavailable until a fetch succeeds (retrying)");
                }
            }
        }
        result
    }

    async fn fetch_inner(&self) -> Result<Duration, FetchError> {
        let s = &self.settings;
        let jwks_uri = match &self.source {
            RemoteSource::Jwks(u) => u.clone(),
            RemoteSource::Discovery(u) => {
                let doc = self.client.get(u, s.timeout, s.max_bytes).await?;
                #[derive(serde::Deserialize)]
                struct Discovery {
                    issuer: String,
                    jwks_uri: String,
                }
                let d: Discovery = serde_json::from_slice(&doc.body)
                    .map_err(|e| FetchError::Invalid(format!("discovery document: {e}")))?;
                // Why: OIDC Discovery §4.3: the issuer in the document must be the one we trust,
                // or a compromised or mistyped discovery URL could substitute another issuer's keys.
                if d.issuer != *self.issuer {
                    return Err(FetchError::Invalid(
                        "discovery issuer does not match".into(),
                    ));
                }
                let jwks = RemoteSource::parse_url(&d.jwks_uri).map_err(FetchError::Invalid)?;
                // Why: a discovery document fetched over https must not send us to plain http
                // (loopback or not): that would let it reach local services.
                if u.scheme_str() == Some("https") && jwks.scheme_str() != Some("https") {
                    return Err(FetchError::Invalid("jwks_uri must be https".into()));
                }
                jwks
            }
        };
        let fetched = self.client.get(&jwks_uri, s.timeout, s.max_bytes).await?;
        let (mut fresh, mut skipped) = match parse_jwks(&fetched.body, true) {
            Ok((keys, skipped)) => (
                keys.into_iter()
                    .map(|k| k.for_issuer(&self.issuer))
                    .collect::<Vec<_>>(),
                skipped,
            ),
            // Why: refusing the document kept the set held, so a key whose private half the
            // IdP had just published went on verifying tokens anyone could now sign. The
            // keys it leaked leave the set; the rest stay until a clean document comes.
            // Regression: jwt::keys::tests::a_leaked_key_stops_verifying, tests (it)
            // jwt::a_key_whose_private_half_is_published_stops_verifying
            Err(e @ super::keys::KeyError::PrivateJwk) => {
                let leaked = super::keys::leaked(&fetched.body);
                super::keys::remember_leaked(&self.issuer, &leaked);
                if let Some(next) = self.keys.load().without_leaked(&leaked) {
                    self.keys.store(Arc::new(next));
                }
                tracing::error!(
                    issuer = &*self.issuer,
                    leaked = leaked.len(),
                    "The key set publishes private keys: those keys no longer verify"
                );
                return Err(FetchError::Invalid(e.to_string()));
            }
            Err(e) => return Err(FetchError::Invalid(e.to_string())),
        };
        // A key whose private half a document once published stays out, however clean this
        // one is. Regression: tests (it) jwt::a_key_whose_private_half_is_published_stops_verifying
        let published = fresh.len();
        fresh.retain(|k| !super::keys::is_leaked(k));
        if fresh.len() < published {
            skipped += published - fresh.len();
            tracing::error!(
                issuer = &*self.issuer,
                leaked = published - fresh.len(),
                "The key set publishes keys whose private half was published before: they stay untrusted until restart"
            );
        }
        if fresh.is_empty() {
            return Err(FetchError::Invalid(format!(
                "no usable signing keys ({skipped} skipped)"
            )));
        }
        let next = self.keys.load().succeed(fresh);
        tracing::info!(
            issuer = &*self.issuer,
            keys = next.len(),
            skipped,
            "Keys fetched"
        );
        self.keys.store(Arc::new(next));
        self.has_keys.store(true, Ordering::Release);
        let refresh = max_age(&fetched.headers)
            .unwrap_or(s.refresh)
            .clamp(s.min_refresh, s.max_refresh.max(s.min_refresh));
        Ok(refresh)
    }
}
