//! Authentication: find a credential, verify it (through the verified-token cache), and turn it
//! into a [`Principal`].
//!
//! A rule names the authenticators it accepts, in order. The first whose credential is present
//! decides: valid → its principal; invalid → refused, never tried elsewhere and never anonymous.
//! Only when no accepted authenticator finds any credential does `anonymous` apply.

pub mod cache;
pub mod credential;
pub mod http_client;
pub mod jwt;
pub mod principal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::cache::{Entry, TokenCache};
use self::credential::{CredentialSource, Found};
use self::jwt::verify::TokenError;
use self::jwt::{JwtAuthenticator, VerifyError};
use self::principal::Principal;
use crate::config::raw::{RawAuthenticator, RawAuthn, RawCredentialSource};
use crate::request::RequestFacts;

pub use self::principal::PrincipalKind;

/// Every configured authenticator, compiled.
#[derive(Debug, Default)]
pub struct Authn {
    list: Vec<Authenticator>,
    index: HashMap<String, usize>,
}

/// One named authenticator.
#[derive(Debug)]
pub struct Authenticator {
    /// Its name.
    pub name: Arc<str>,
    /// Where its credential is looked for.
    pub sources: Box<[CredentialSource]>,
    /// Remove the credential before forwarding.
    pub strip: bool,
    /// How it verifies.
    pub kind: Kind,
    cache: TokenCache,
    raw: RawAuthenticator,
    cache_settings: crate::config::raw::RawTokenCache,
    keys_id: [u8; 32],
}

/// The verification an authenticator performs.
#[derive(Debug)]
pub enum Kind {
    /// JWTs.
    Jwt(JwtAuthenticator),
}

/// The result of authentication for one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A valid credential.
    Authenticated {
        /// Who.
        principal: Arc<Principal>,
        /// Index of the authenticator that verified it.
        authenticator: usize,
    },
    /// No credential, and the rule allows anonymous access.
    Anonymous,
    /// Refused.
    Failed(Failure),
}

/// Why authentication refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No credential where one is required.
    Missing,
    /// Two different credentials, or a repeated header.
    Ambiguous,
    /// A credential that does not verify.
    Invalid(TokenError),
    /// The keys needed are unavailable (key server down since startup).
    Unavailable,
}

// === impl Authn ===

impl Authn {
    /// Compiles the authenticators; `previous` lends caches and fetched keys whose config is
    /// unchanged (resetting them on every reload would refetch keys and reverify every token).
    pub fn compile(
        raw: &std::collections::BTreeMap<String, RawAuthenticator>,
        settings: &RawAuthn,
        base_dir: &Path,
        previous: Option<&Self>,
        watched: &mut Vec<PathBuf>,
    ) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let mut out = Self::default();
        for (name, a) in raw {
            let at = |f: &str| format!("authenticators.{name}.{f}");
            let prev = previous.and_then(|p| p.get(name));
            let (sources, strip, kind) = match a {
                RawAuthenticator::Jwt(j) => {
                    let sources = match compile_sources(&j.from) {
                        Ok(s) => s,
                        Err((i, m)) => {
                            errors.push((at(&format!("jwt.from[{i}]")), m));
                            continue;
                        }
                    };
                    let prev_jwt = prev.map(|p| match &p.kind {
                        Kind::Jwt(j) => j,
                    });
                    match JwtAuthenticator::compile(j, base_dir, prev_jwt, watched) {
                        Ok(c) => (sources, j.strip, Kind::Jwt(c)),
                        Err(es) => {
                            errors
                                .extend(es.into_iter().map(|(f, m)| (at(&format!("jwt.{f}")), m)));
                            continue;
                        }
                    }
                }
            };
            let keys_id = match &kind {
                Kind::Jwt(j) => j.static_keys_fingerprint(),
            };
            let cache = match prev {
                Some(p)
                    if p.raw == *a
                        && p.cache_settings == settings.cache
                        && p.keys_id == keys_id =>
                {
                    p.cache.clone()
                }
                _ => TokenCache::new(
                    settings.cache.max_entries,
                    settings.cache.max_bytes,
                    settings.cache.revalidate_after,
                ),
            };
            out.index.insert(name.clone(), out.list.len());
            out.list.push(Authenticator {
                name: name.as_str().into(),
                sources,
                strip,
                kind,
                cache,
                raw: a.clone(),
                cache_settings: settings.cache.clone(),
                keys_id,
            });
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// The index of a named authenticator.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    fn get(&self, name: &str) -> Option<&Authenticator> {
        self.position(name).and_then(|i| self.list.get(i))
    }

    /// The authenticator at `i`.
    pub fn at(&self, i: usize) -> Option<&Authenticator> {
        self.list.get(i)
    }

    /// Every authenticator.
    pub fn iter(&self) -> impl Iterator<Item = &Authenticator> {
        self.list.iter()
    }

    /// Starts background work (key refreshes). Idempotent; call after every snapshot swap.
    pub fn start(&self) {
        for a in &self.list {
            match &a.kind {
                Kind::Jwt(j) => {
                    for p in j.providers() {
                        if let Some(r) = &p.remote {
                            r.start();
                        }
                    }
                }
            }
        }
    }

    /// Whether every remote key set has keys (or gave up waiting at startup).
    pub fn is_ready(&self) -> bool {
        self.list.iter().all(|a| match &a.kind {
            Kind::Jwt(j) => j
                .providers()
                .iter()
                .all(|p| p.remote.as_ref().is_none_or(|r| r.is_ready())),
        })
    }

    /// Authenticates a request for a rule accepting `accepted` (in order) and maybe anonymous.
    pub async fn authenticate(
        &self,
        accepted: &[usize],
        anonymous: bool,
        facts: &RequestFacts<'_>,
        now: u64,
    ) -> Outcome {
        for &i in accepted {
            let Some(a) = self.list.get(i) else { continue };
            let token = match credential::find(&a.sources, facts.headers, facts.query) {
                Found::Nothing => continue,
                Found::Token(t) => t,
                Found::Conflict => return Outcome::Failed(Failure::Ambiguous),
                Found::Malformed => {
                    return Outcome::Failed(Failure::Invalid(TokenError::Malformed));
                }
            };
            // Why: a credential for another accepted authenticator that differs from this one
            // would reach the upstream unverified.
            for &j in accepted.iter().filter(|&&j| j != i) {
                let Some(other) = self.list.get(j) else {
                    continue;
                };
                match credential::find(&other.sources, facts.headers, facts.query) {
                    Found::Nothing => {}
                    Found::Token(t) if t == token => {}
                    _ => return Outcome::Failed(Failure::Ambiguous),
                }
            }
            return match a.verify(&token, now).await {
                Ok(principal) => Outcome::Authenticated {
                    principal,
                    authenticator: i,
                },
                Err(f) => Outcome::Failed(f),
            };
        }
        if anonymous {
            Outcome::Anonymous
        } else {
            Outcome::Failed(Failure::Missing)
        }
    }
}

// === impl Authenticator ===

impl Authenticator {
    /// Verifies a credential, through the cache.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Arc<Principal>, Failure> {
        match &self.kind {
            Kind::Jwt(j) => {
                if token.len() > j.max_token_bytes {
                    // Before hashing: a huge token costs nothing.
                    return Err(Failure::Invalid(TokenError::TooLarge));
                }
                let digest = TokenCache::digest(token);
                if let Some(e) = self.cache.get(&digest, now) {
                    return Ok(Arc::clone(&e.principal));
                }
                match j.verify(token, &self.name, now).await {
                    Ok(v) => {
                        let p = Arc::new(v.principal);
                        self.cache.insert(
                            digest,
                            Entry::new(Arc::clone(&p), v.valid_until, Some(v.key)),
                        );
                        Ok(p)
                    }
                    Err(VerifyError::Token(e)) => Err(Failure::Invalid(e)),
                    Err(VerifyError::KeysUnavailable) => Err(Failure::Unavailable),
                }
            }
        }
    }

    /// Names of the query parameters this authenticator reads credentials from.
    pub fn query_sources(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().filter_map(|s| match s {
            CredentialSource::Query(q) => Some(&**q),
            _ => None,
        })
    }

    /// Entries in the verified-token cache.
    pub fn cached(&self) -> u64 {
        self.cache.len()
    }
}

fn compile_sources(
    raw: &[RawCredentialSource],
) -> Result<Box<[CredentialSource]>, (usize, String)> {
    if raw.is_empty() {
        return Err((0, "at least one credential source is required".into()));
    }
    raw.iter()
        .enumerate()
        .map(|(i, s)| match s {
            RawCredentialSource::Bearer => Ok(CredentialSource::Bearer),
            RawCredentialSource::Header(h) => http::HeaderName::from_bytes(h.as_bytes())
                .map(CredentialSource::Header)
                .map_err(|_| (i, format!("`{h}` is not a valid header name"))),
            RawCredentialSource::Cookie(c) if !c.is_empty() && !c.contains([';', '=', ' ']) => {
                Ok(CredentialSource::Cookie(c.as_str().into()))
            }
            RawCredentialSource::Cookie(c) => Err((i, format!("`{c}` is not a valid cookie name"))),
            RawCredentialSource::Query(q) if !q.is_empty() => {
                Ok(CredentialSource::Query(q.as_str().into()))
            }
            RawCredentialSource::Query(_) => {
                Err((i, "query parameter name must not be empty".into()))
            }
        })
        .collect()
}
