//! Authentication: find a credential, verify it (through the verified-token cache), and turn it
//! into a [`Principal`].
//!
//! A rule names the authenticators it accepts, in order. The first whose credential is present
//! decides: valid → its principal; invalid → refused, never tried elsewhere and never anonymous.
//! Only when no accepted authenticator finds any credential does `anonymous` apply.

pub mod apikey;
pub mod cache;
pub mod credential;
pub mod http_client;
pub mod introspection;
pub mod jwt;
pub mod mtls;
pub mod principal;
pub mod trusted;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::HeaderName;

use self::apikey::{ApiKeys, KeyError};
use self::cache::{Entry, TokenCache};
use self::credential::{CredentialSource, Found};
use self::introspection::{Answer, Introspector, Unavailable};
use self::jwt::verify::TokenError;
use self::jwt::{JwtAuthenticator, VerifyError};
use self::mtls::Mtls;
use self::principal::Principal;
use self::trusted::{Seen, TrustedHeaders};
use crate::config::FieldError;
use crate::config::diagnostic::Diagnostic;
use crate::config::raw::{RawAuthenticator, RawAuthn, RawCredentialSource};
use crate::request::RequestFacts;

pub use self::principal::PrincipalKind;

/// Every configured authenticator, compiled.
#[derive(Debug, Default)]
pub struct Authn {
    list: Vec<Authenticator>,
    index: HashMap<String, usize>,
    /// Header names of every trusted-headers authenticator, removed from every forwarded
    /// request whatever the decision.
    spoofable: Box<[HeaderName]>,
    /// Every authenticator's query credential names, cut from a login redirect's return
    /// address whichever rule redirects.
    query_credentials: Box<[Box<str>]>,
}

/// One named authenticator.
#[derive(Debug)]
pub struct Authenticator {
    /// Its name.
    pub name: Arc<str>,
    /// Where its credential is looked for (empty for credentials that are not forwarded
    /// tokens: client certificates, trusted headers).
    pub sources: Box<[CredentialSource]>,
    /// Remove the credential before forwarding.
    pub strip: bool,
    /// How it verifies.
    pub kind: Kind,
    cache: TokenCache,
    /// The section as written, its cache settings and its static keys: when a reload leaves
    /// all three alone, the verified-token cache carries over.
    fingerprint: crate::config::Fingerprint,
}

/// The verification an authenticator performs.
#[derive(Debug)]
pub enum Kind {
    /// JWTs.
    Jwt(JwtAuthenticator),
    /// API keys.
    ApiKey(ApiKeys),
    /// Opaque tokens, by introspection.
    Introspection(Box<Introspector>),
    /// Identity headers from a trusted inner proxy.
    TrustedHeaders(TrustedHeaders),
    /// Verified client certificates.
    Mtls(Mtls),
}

/// A problem found while compiling authenticators.
#[derive(Debug)]
pub enum CompileError {
    /// A field of the config (path from the authenticator's kind).
    Field(crate::config::FieldError),
    /// A problem in another file the config names (an API key file), already located.
    File(Diagnostic),
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
    /// Refused; the authenticator that refused, when one did.
    Failed(Failure, Option<usize>),
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
    /// What is needed to verify is unavailable (key server down since startup, introspection
    /// endpoint failing).
    Unavailable,
    /// The verification was not tried: the client's share of introspection calls, or every
    /// slot, was taken (a load the gateway sheds).
    Shed,
}

/// What one authenticator found in a request.
enum Credential<'a> {
    Nothing,
    /// A token that is forwarded with the request unless stripped.
    Token(std::borrow::Cow<'a, str>),
    /// An `Authorization: Bearer` token whose syntax is not checked yet
    /// ([`credential::find_deferred`]).
    Unchecked(&'a [u8]),
    /// A credential of the connection or of trusted headers.
    Present,
    Conflict,
    Malformed,
}

// === impl Authn ===

impl Authn {
    /// Compiles the authenticators; `previous` lends caches and fetched keys whose config is
    /// unchanged (resetting them on every reload would refetch keys and reverify every token).
    /// Config errors are reported with their field path from the config's root.
    pub fn compile(
        raw: &std::collections::BTreeMap<String, RawAuthenticator>,
        settings: &RawAuthn,
        base_dir: &Path,
        previous: Option<&Self>,
        watched: &mut Vec<PathBuf>,
    ) -> Result<Self, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut out = Self::default();
        let mut spoofable: Vec<HeaderName> = Vec::new();
        // Why: each authenticator that caches (JWT, introspection) had a cache of the whole
        // `authn.cache` bounds, so the documented one bound was one per authenticator: a
        // tester's made-up opaque tokens (cached as inactive) grew a gateway with three
        // introspection authenticators by 194 MB against a 64 MiB bound. The bounds are
        // shared evenly among them.
        // Regression: tests (it) memory::the_token_cache_bound_is_shared_by_the_authenticators
        let caching = raw
            .values()
            .filter(|a| {
                matches!(
                    a,
                    RawAuthenticator::Jwt(_) | RawAuthenticator::Introspection(_)
                )
            })
            .count()
            .max(1) as u64;
        let share = |bound: u64| match bound {
            0 => 0,
            b => (b / caching).max(1),
        };
        let (max_entries, max_bytes) = (
            share(settings.cache.max_entries),
            share(settings.cache.max_bytes),
        );
        for (name, a) in raw {
            let name_arc: Arc<str> = name.as_str().into();
            let prev = previous.and_then(|p| p.get(name));
            let before = errors.len();
            let compiled = match a {
                RawAuthenticator::Jwt(j) => {
                    let sources = compile_sources(&j.from)
                        .map_err(|e| field_errors(&mut errors, name, "jwt", vec![e]));
                    let prev_jwt = prev.and_then(|p| match &p.kind {
                        Kind::Jwt(j) => Some(j),
                        _ => None,
                    });
                    match (
                        sources,
                        JwtAuthenticator::compile(j, base_dir, prev_jwt, watched),
                    ) {
                        (Ok(s), Ok(c)) => Some((s, j.strip, Kind::Jwt(c))),
                        (_, Err(es)) => {
                            field_errors(&mut errors, name, "jwt", es);
                            None
                        }
                        _ => None,
                    }
                }
                RawAuthenticator::ApiKey(k) => {
                    let sources = compile_sources(&k.from)
                        .map_err(|e| field_errors(&mut errors, name, "api_key", vec![e]));
                    match ApiKeys::compile(k, &name_arc, base_dir, watched) {
                        Ok(keys) => sources.ok().map(|s| (s, k.strip, Kind::ApiKey(keys))),
                        Err(es) => {
                            for e in es {
                                match e {
                                    CompileError::Field(e) => {
                                        field_errors(&mut errors, name, "api_key", vec![e]);
                                    }
                                    CompileError::File(d) => {
                                        errors.push(CompileError::File(d));
                                    }
                                }
                            }
                            None
                        }
                    }
                }
                RawAuthenticator::Introspection(x) => {
                    let sources = compile_sources(&x.from)
                        .map_err(|e| field_errors(&mut errors, name, "introspection", vec![e]));
                    match (sources, Introspector::compile(x, base_dir, watched)) {
                        (Ok(s), Ok(c)) => Some((s, x.strip, Kind::Introspection(Box::new(c)))),
                        (_, Err(es)) => {
                            field_errors(&mut errors, name, "introspection", es);
                            None
                        }
                        _ => None,
                    }
                }
                RawAuthenticator::TrustedHeaders(t) => match TrustedHeaders::compile(t) {
                    Ok(c) => {
                        spoofable.extend(c.names().cloned());
                        Some((Box::default(), false, Kind::TrustedHeaders(c)))
                    }
                    Err(es) => {
                        field_errors(&mut errors, name, "trusted_headers", es);
                        None
                    }
                },
                RawAuthenticator::Mtls(m) => match Mtls::compile(m) {
                    Ok(c) => Some((Box::default(), false, Kind::Mtls(c))),
                    Err(e) => {
                        field_errors(&mut errors, name, "mtls", vec![e]);
                        None
                    }
                },
            };
            let Some((sources, strip, kind)) = compiled else {
                if errors.len() == before {
                    errors.push(CompileError::Field(FieldError::new(
                        format!("authenticators.{name}"),
                        "invalid authenticator",
                    )));
                }
                continue;
            };
            let keys_id = match &kind {
                Kind::Jwt(j) => j.keys_fingerprint(),
                _ => [0; 32],
            };
            let fingerprint =
                crate::config::Fingerprint::of(&[a, &settings.cache, &keys_id, &caching]);
            let cache = match prev {
                Some(p) if p.fingerprint == fingerprint => p.cache.clone(),
                _ => match &kind {
                    Kind::Jwt(_) => {
                        TokenCache::new(max_entries, max_bytes, settings.cache.revalidate_after)
                    }
                    Kind::Introspection(x) => TokenCache::new(
                        max_entries,
                        max_bytes,
                        settings.cache.revalidate_after.min(x.cache_ttl),
                    ),
                    // Looked up in memory, or read from the request: nothing to cache.
                    _ => TokenCache::new(0, 0, std::time::Duration::ZERO),
                },
            };
            out.index.insert(name.clone(), out.list.len());
            out.list.push(Authenticator {
                name: name_arc,
                sources,
                strip,
                kind,
                cache,
                fingerprint,
            });
        }
        spoofable.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        spoofable.dedup();
        out.spoofable = spoofable.into();
        out.query_credentials = out
            .list
            .iter()
            .flat_map(|a| a.query_sources().map(Box::from))
            .collect();
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
            if let Kind::Jwt(j) = &a.kind {
                for p in j.providers() {
                    if let Some(r) = &p.remote {
                        r.start();
                    }
                }
            }
        }
    }

    /// Whether every remote key set was fetched at least once (an optional one: or its
    /// startup timeout passed).
    pub fn is_ready(&self) -> bool {
        self.list.iter().all(|a| match &a.kind {
            Kind::Jwt(j) => j.providers().iter().all(jwt::Provider::is_ready),
            _ => true,
        })
    }

    /// What `/readyz` waits for: each required remote key set not fetched yet, as
    /// "`name` (issuer `…`)". Empty when [`Self::is_ready`].
    pub fn waiting_for(&self) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.list {
            if let Kind::Jwt(j) = &a.kind {
                for p in j.providers().iter().filter(|p| !p.is_ready()) {
                    out.push(format!("`{}` (issuer `{}`)", a.name, p.issuer));
                }
            }
        }
        out
    }

    /// Whether waiting for keys is over: every remote key set was fetched or its startup
    /// timeout passed (`explain` waits this long, as a starting gateway would).
    pub fn keys_settled(&self) -> bool {
        self.list.iter().all(|a| match &a.kind {
            Kind::Jwt(j) => j.providers().iter().all(jwt::Provider::keys_settled),
            _ => true,
        })
    }

    /// Every authenticator's query credential names (built once, at config load).
    pub fn query_credentials(&self) -> &[Box<str>] {
        &self.query_credentials
    }

    /// Header names of every trusted-headers authenticator: removed from every forwarded
    /// request whatever the decision (see [`crate::authz::spoofable::Spoofable`]).
    pub fn spoofable_names(&self) -> &[HeaderName] {
        &self.spoofable
    }

    /// Authenticates a request for a rule accepting `accepted` (in order) and maybe anonymous.
    /// `fresh`: verify past the verified-token cache (a live tunnel's re-check: a revoked
    /// token must be seen as revoked, not as the cached answer); the new answer is cached.
    pub async fn authenticate(
        &self,
        accepted: &[usize],
        anonymous: bool,
        facts: &RequestFacts<'_>,
        now: u64,
        fresh: bool,
    ) -> Outcome {
        // One authenticator: no other to conflict with, so a bearer token may be looked up
        // in its cache before its syntax is checked (`credential::find_deferred`).
        let lone = accepted.len() == 1;
        for &i in accepted {
            let Some(a) = self.list.get(i) else { continue };
            let token = match a.find(facts, lone) {
                Credential::Nothing => continue,
                Credential::Token(t) => Some(t),
                Credential::Unchecked(bytes) => {
                    if !fresh && let Some(e) = a.cached_bearer(bytes, now) {
                        return settle(e.result.clone().map_err(Failure::Invalid), i);
                    }
                    match credential::check_bearer(bytes) {
                        Found::Token(t) => Some(t),
                        Found::Conflict => return Outcome::Failed(Failure::Ambiguous, Some(i)),
                        _ => {
                            return Outcome::Failed(
                                Failure::Invalid(TokenError::Malformed),
                                Some(i),
                            );
                        }
                    }
                }
                Credential::Present => None,
                Credential::Conflict => return Outcome::Failed(Failure::Ambiguous, Some(i)),
                Credential::Malformed => {
                    return Outcome::Failed(Failure::Invalid(TokenError::Malformed), Some(i));
                }
            };
            // Why: a token for another accepted authenticator that differs from the one
            // verified would reach the upstream unverified. (Certificates and trusted headers
            // are never forwarded, so they conflict with nothing.)
            for &j in accepted.iter().filter(|&&j| j != i) {
                let Some(other) = self.list.get(j) else {
                    continue;
                };
                if other.sources.is_empty() {
                    continue;
                }
                // The refusal names the authenticator whose own credential is doubled or
                // unreadable; two readable credentials of two authenticators are no one's
                // (its challenge is then the generic one, not the first listed's scheme).
                match credential::find(&other.sources, facts.headers, facts.query) {
                    Found::Nothing => {}
                    Found::Token(t) if token.as_ref() == Some(&t) => {}
                    Found::Token(_) => {
                        // Two API keys (both `ApiKey` authenticators) are still the ApiKey
                        // scheme's to challenge.
                        let keys = a.challenges_api_key() && other.challenges_api_key();
                        return Outcome::Failed(Failure::Ambiguous, keys.then_some(i));
                    }
                    _ => return Outcome::Failed(Failure::Ambiguous, Some(j)),
                }
            }
            let verified = match &token {
                Some(t) => {
                    a.verify(t, now, fresh, facts.client_ip, facts.deadline)
                        .await
                }
                None => a.verify_request(facts, now),
            };
            return settle(verified, i);
        }
        if anonymous {
            Outcome::Anonymous
        } else {
            Outcome::Failed(Failure::Missing, None)
        }
    }
}

/// The outcome of authenticator `i`'s verification.
fn settle(verified: Result<Arc<Principal>, Failure>, i: usize) -> Outcome {
    match verified {
        Ok(principal) => Outcome::Authenticated {
            principal,
            authenticator: i,
        },
        Err(f) => Outcome::Failed(f, Some(i)),
    }
}

// === impl Authenticator ===

impl Authenticator {
    /// Whether its credential is an API key sent outside `Authorization: Bearer`: its 401
    /// challenges with the `ApiKey` scheme, not `Bearer` (whose RFC 6750 errors are about
    /// bearer tokens).
    pub fn challenges_api_key(&self) -> bool {
        matches!(self.kind, Kind::ApiKey(_)) && !self.sources.contains(&CredentialSource::Bearer)
    }

    /// The credential in the request; `defer`: a lone bearer source's token comes back
    /// [`Credential::Unchecked`].
    fn find<'a>(&self, facts: &'a RequestFacts<'_>, defer: bool) -> Credential<'a> {
        match &self.kind {
            Kind::TrustedHeaders(t) => {
                if t.present(facts.headers, facts.conn.peer.ip()) {
                    Credential::Present
                } else {
                    Credential::Nothing
                }
            }
            Kind::Mtls(m) => {
                let has_cert = facts
                    .conn
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.client_cert.is_some());
                if has_cert && m.accepts_listener(&facts.conn.listener) {
                    Credential::Present
                } else {
                    Credential::Nothing
                }
            }
            _ => match if defer {
                credential::find_deferred(&self.sources, facts.headers, facts.query)
            } else {
                credential::find(&self.sources, facts.headers, facts.query)
            } {
                Found::Nothing => Credential::Nothing,
                Found::Token(t) => Credential::Token(t),
                Found::Unchecked(t) => Credential::Unchecked(t),
                Found::Conflict => Credential::Conflict,
                Found::Malformed => Credential::Malformed,
            },
        }
    }

    /// Verifies a credential that is part of the request itself (client certificate, trusted
    /// headers).
    fn verify_request(
        &self,
        facts: &RequestFacts<'_>,
        now: u64,
    ) -> Result<Arc<Principal>, Failure> {
        let principal = match &self.kind {
            Kind::TrustedHeaders(t) => {
                match t.read(facts.headers, facts.conn.peer.ip(), &self.name) {
                    Seen::Principal(p) => p,
                    Seen::Invalid(e) => return Err(Failure::Invalid(e)),
                    Seen::Nothing => return Err(Failure::Missing),
                }
            }
            Kind::Mtls(m) => {
                let cert = facts
                    .conn
                    .tls
                    .as_ref()
                    .and_then(|t| t.client_cert.as_ref())
                    .ok_or(Failure::Missing)?;
                Arc::new(
                    m.principal(cert, &self.name, now)
                        .map_err(Failure::Invalid)?,
                )
            }
            _ => return Err(Failure::Missing),
        };
        Ok(principal)
    }

    /// A cached answer for a bearer token whose syntax is not checked yet
    /// ([`TokenCache::get_bearer`]).
    fn cached_bearer(&self, token: &[u8], now: u64) -> Option<Arc<Entry>> {
        let max = match &self.kind {
            Kind::Jwt(j) => j.max_token_bytes,
            Kind::Introspection(x) => x.max_token_bytes,
            _ => return None,
        };
        (token.len() <= max)
            .then(|| self.cache.get_bearer(token, now))
            .flatten()
    }

    /// Verifies a token, through the cache unless `fresh`; `client` is the request's client
    /// address (an introspection call counts against its share); a refetch of keys for an
    /// unknown `kid` is waited for until `deadline` (the door's) is near.
    pub async fn verify(
        &self,
        token: &str,
        now: u64,
        fresh: bool,
        client: std::net::IpAddr,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Arc<Principal>, Failure> {
        match &self.kind {
            Kind::Jwt(j) => {
                if token.len() > j.max_token_bytes {
                    // Before hashing: a huge token costs nothing.
                    return Err(Failure::Invalid(TokenError::TooLarge));
                }
                if !fresh && let Some(e) = self.cache.get(token, now) {
                    return e.result.clone().map_err(Failure::Invalid);
                }
                // Boxed: a miss may fetch keys, and its large future would otherwise be
                // carried, and moved, by every request's future.
                match Box::pin(j.verify(token, &self.name, now, deadline)).await {
                    Ok(v) => {
                        let p = Arc::new(v.principal);
                        self.cache.insert(
                            token,
                            Entry::new(Arc::clone(&p), v.valid_until, Some(v.key)),
                        );
                        Ok(p)
                    }
                    Err(VerifyError::Token(e)) => Err(Failure::Invalid(e)),
                    Err(VerifyError::KeysUnavailable) => Err(Failure::Unavailable),
                }
            }
            Kind::ApiKey(keys) => keys.verify(token, now).map_err(|e| {
                Failure::Invalid(match e {
                    KeyError::Unknown => TokenError::UnknownApiKey,
                    KeyError::Disabled => TokenError::Disabled,
                    KeyError::Expired => TokenError::Expired,
                })
            }),
            Kind::Introspection(x) => {
                if token.len() > x.max_token_bytes {
                    return Err(Failure::Invalid(TokenError::TooLarge));
                }
                if !fresh && let Some(e) = self.cache.get(token, now) {
                    return e.result.clone().map_err(Failure::Invalid);
                }
                // Boxed, like a JWT miss: the HTTP exchange is a large future.
                match Box::pin(x.introspect_once(token, &self.name, now, client, fresh)).await {
                    Ok(Answer::Active(p, exp)) => {
                        self.cache
                            .insert(token, Entry::new(Arc::clone(&p), exp, None));
                        Ok(p)
                    }
                    Ok(Answer::Inactive(e)) => {
                        let until = now.saturating_add(x.inactive_ttl.as_secs().max(1));
                        if !x.inactive_ttl.is_zero() {
                            self.cache.insert(token, Entry::refused(e, until));
                        }
                        Err(Failure::Invalid(e))
                    }
                    // Logged (rate-limited) by the introspector.
                    Err(Unavailable::Failed) => Err(Failure::Unavailable),
                    // Why a refusal of its own: as `Unavailable` it was "could not decide",
                    // which a decision door answers with a failed call, and Envoy's
                    // `failure_mode_allow: true` turned a client's own flood of made-up tokens
                    // (its share full) into allows for its forged ones.
                    // Regression: tests (it) credentials::a_shed_verification_is_a_refusal_at_every_door
                    Err(Unavailable::Shed) => Err(Failure::Shed),
                }
            }
            Kind::TrustedHeaders(_) | Kind::Mtls(_) => Err(Failure::Missing),
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

fn field_errors(errors: &mut Vec<CompileError>, name: &str, kind: &str, es: Vec<FieldError>) {
    let prefix = format!("authenticators.{name}.{kind}");
    errors.extend(
        es.into_iter()
            .map(|e| CompileError::Field(e.under(&prefix))),
    );
}

fn compile_sources(raw: &[RawCredentialSource]) -> Result<Box<[CredentialSource]>, FieldError> {
    if raw.is_empty() {
        return Err(FieldError::new(
            "from",
            "at least one credential source is required",
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, s)| match s {
            RawCredentialSource::Bearer => Ok(CredentialSource::Bearer),
            RawCredentialSource::Header(h) => http::HeaderName::from_bytes(h.as_bytes())
                .map(CredentialSource::Header)
                .map_err(|_| {
                    FieldError::new(
                        format!("from[{i}]"),
                        format!("`{h}` is not a valid header name"),
                    )
                }),
            RawCredentialSource::Cookie(c) if !c.is_empty() && !c.contains([';', '=', ' ']) => {
                Ok(CredentialSource::Cookie(c.as_str().into()))
            }
            RawCredentialSource::Cookie(c) => Err(FieldError::new(
                format!("from[{i}]"),
                format!("`{c}` is not a valid cookie name"),
            )),
            RawCredentialSource::Query(q) if !q.is_empty() => {
                Ok(CredentialSource::Query(q.as_str().into()))
            }
            RawCredentialSource::Query(_) => Err(FieldError::new(
                format!("from[{i}]"),
                "query parameter name must not be empty",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;
    use crate::config::raw::{Network, RawPrincipalKind, RawTrustedHeaders};

    #[test]
    fn spoofable_names_are_stripped_in_every_dash_and_underscore_spelling() {
        let raw = [(
            "inner".to_owned(),
            RawAuthenticator::TrustedHeaders(RawTrustedHeaders {
                networks: vec![Network("10.0.0.0/8".parse().unwrap())],
                id: "x_auth_user".into(),
                kind_header: None,
                kind: RawPrincipalKind::User,
                scopes: Some("x-auth-scopes".into()),
                roles: None,
                tenant: None,
                claims: std::collections::BTreeMap::new(),
            }),
        )]
        .into();
        let authn = Authn::compile(
            &raw,
            &RawAuthn::default(),
            Path::new("."),
            None,
            &mut Vec::new(),
        )
        .unwrap();
        let mut headers = HeaderMap::new();
        for name in [
            "x-auth-user",
            "X_Auth_User",
            "x_auth_scopes",
            "x-auth-scopes",
            "x-other",
        ] {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        crate::authz::spoofable::Spoofable::new(authn.spoofable_names(), Vec::new())
            .strip(&mut headers, false);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-other"]);
    }
}
