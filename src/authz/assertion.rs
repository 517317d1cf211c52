//! The signed identity assertion: a short-lived JWT the gateway mints for an allowed,
//! authenticated request, so an upstream can verify who is calling (against the JWKS on the
//! admin listener) instead of trusting a header.
//!
//! Signing costs tens of microseconds, a cached decision under one; so an assertion is reused
//! for the same claims during the first half of its life. The cache is keyed by a seeded hash
//! of the claims and a hit must match them exactly: a collision is a miss, never somebody
//! else's identity.

use crate::config::FieldError;
use std::fmt::Write as _;
use std::hash::BuildHasher as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::identity::{Context, Template, check_name};
use crate::authn::jwt::keys::{alg_name, parse_alg};
use crate::authn::jwt::mint::SigningKey;
use crate::config::raw::RawAssertion;

/// The default header.
pub const DEFAULT_HEADER: &str = "x-portcullis-assertion";

/// Longest allowed lifetime.
const MAX_TTL: Duration = Duration::from_secs(3600);

/// Assertions kept for reuse.
const CACHE_ENTRIES: u64 = 100_000;

/// A compiled assertion config with its signing key.
pub struct Assertion {
    /// The header it is sent in.
    pub header: HeaderName,
    key: SigningKey,
    issuer: Value,
    audience: Option<Value>,
    ttl: Duration,
    claims: Box<[(Box<str>, Template)]>,
    jwks: Bytes,
    cache: moka::sync::Cache<u64, Arc<Minted>>,
    hasher: foldhash::fast::RandomState,
}

/// One minted assertion and the claims (without `iat`/`exp`, with a capped expiry) it was
/// minted for.
struct Minted {
    claims: Box<str>,
    value: HeaderValue,
}

impl std::fmt::Debug for Assertion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assertion")
            .field("header", &self.header)
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Assertion {
    /// Compiles the config and loads its keys (paths relative to `base_dir`).
    pub fn compile(raw: &RawAssertion, base_dir: &Path) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let header = match check_name(raw.header.as_deref().unwrap_or(DEFAULT_HEADER)) {
            Ok(h)
                if let Some(why) =
                    super::identity::gateway_owned(&h).filter(|_| h != DEFAULT_HEADER) =>
            {
                errors.push(FieldError::new("header", format!("`{h}` {why}")));
                None
            }
            Ok(h) => Some(h),
            Err(m) => {
                errors.push(FieldError::new("header", m));
                None
            }
        };
        let key = load_key(base_dir, &raw.key_file, &raw.algorithm, &raw.kid)
            .map_err(|e| errors.push(e))
            .ok();
        let mut published: Vec<Value> = key.iter().map(|k| k.jwk.clone()).collect();
        for (i, r) in raw.retired_keys.iter().enumerate() {
            if r.kid == raw.kid {
                errors.push(FieldError::new(
                    format!("retired_keys[{i}].kid"),
                    format!("`{}` is the signing key's id", r.kid),
                ));
                continue;
            }
            // Why: two retired keys with one `kid` were both published, and a verifier
            // picking a key by `kid` may take either: assertions signed with one fail (or,
            // with a lenient verifier, are checked against the wrong key).
            // Regression: tests (it) assertion::a_kid_is_published_once
            if let Some(j) = raw.retired_keys[..i].iter().position(|p| p.kid == r.kid) {
                errors.push(FieldError::new(
                    format!("retired_keys[{i}].kid"),
                    format!(
                        "`{}` is retired_keys[{j}]'s id too: each published key needs its own",
                        r.kid
                    ),
                ));
                continue;
            }
            match load_key(base_dir, &r.key_file, &r.algorithm, &r.kid) {
                Ok(k) => published.push(k.jwk),
                Err(e) => errors.push(e.under(&format!("retired_keys[{i}]"))),
            }
        }
        if raw.ttl.as_secs() == 0 || raw.ttl.subsec_nanos() != 0 || raw.ttl > MAX_TTL {
            errors.push(FieldError::new(
                "ttl",
                "whole seconds, from 1s to 1h: an assertion is short-lived",
            ));
        }
        if raw.issuer.is_empty() {
            errors.push(FieldError::new("issuer", "must not be empty"));
        }
        // `sub` alone does not tell principals apart: an API key's owner `alice` and a
        // token's `sub: alice` are different callers. `authenticator` says whose it is.
        // Why: and within one authenticator, `idp` (the token's issuer: one `jwt`
        // authenticator may trust several) and `kind` (a machine's `client_id` may spell a
        // user's `sub`). Without them a partner issuer's `alice` got the very assertion the
        // main issuer's alice gets. Regression: tests (it)
        // assertion::assertions_tell_issuers_and_kinds_apart
        let mut claims: Vec<(Box<str>, Template)> = Vec::new();
        for (name, default) in [
            ("sub", "{principal.id}"),
            ("authenticator", "{principal.authenticator}"),
            ("idp", "{principal.issuer}"),
            ("kind", "{principal.kind}"),
        ] {
            if !raw.claims.contains_key(name)
                && let Ok(t) = Template::parse(default)
            {
                claims.push((name.into(), t));
            }
        }
        for (name, text) in &raw.claims {
            if matches!(name.as_str(), "iss" | "aud" | "iat" | "exp" | "nbf") {
                errors.push(FieldError::new(
                    format!("claims.{name}"),
                    "set by the gateway (`issuer`, `audience`, `ttl`)",
                ));
                continue;
            }
            match Template::parse(text) {
                Ok(t) => claims.push((name.as_str().into(), t)),
                Err(m) => errors.push(FieldError::new(format!("claims.{name}"), m)),
            }
        }
        let (Some(header), Some(key), true) = (header, key, errors.is_empty()) else {
            return Err(errors);
        };
        let ttl = raw.ttl;
        Ok(Self {
            header,
            key,
            issuer: Value::from(raw.issuer.as_str()),
            audience: raw.audience.as_deref().map(Value::from),
            ttl,
            claims: claims.into(),
            jwks: Bytes::from(json!({ "keys": published }).to_string()),
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(ttl / 2)
                .build(),
            hasher: foldhash::fast::RandomState::default(),
        })
    }

    /// The JWKS document of the signing key and the retired ones.
    pub fn jwks(&self) -> &Bytes {
        &self.jwks
    }

    /// The assertion for an authenticated request (`Ok(None)` for an anonymous one).
    /// `Err` when it cannot be signed (logged): the request must not go upstream without
    /// the assertion an upstream may rely on.
    /// `audience` replaces the configured one (an upstream's own `assertion_audience`).
    pub fn mint(
        &self,
        cx: &Context<'_>,
        now: u64,
        audience: Option<&str>,
    ) -> Result<Option<HeaderValue>, MintFailed> {
        let Some(principal) = cx.principal else {
            return Ok(None);
        };
        let mut claims = Map::new();
        for (name, template) in &*self.claims {
            if let Some(v) = template.render_json(cx) {
                claims.insert(name.to_string(), v);
            }
        }
        // Why: a `sub` template naming a claim the token lacks (`{claims.preferred_username}`)
        // left `sub` out: the upstream got an assertion naming nobody, and, its claims the
        // same, alice's very token was reused for bob. `sub` is a non-empty string (RFC 7519's
        // StringOrURI) or nothing is minted, and the request does not go upstream.
        // Regression: tests (it) assertion::an_assertion_without_a_subject_is_not_minted
        if claims
            .get("sub")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            tracing::warn!(
                authenticator = &*principal.authenticator,
                "The identity assertion's `sub` renders no text for this principal (a claim it names is absent, or not a string): not minted"
            );
            return Err(MintFailed);
        }
        // Never outliving the credential it vouches for. A capped expiry is part of the
        // cache key, so a reuse never carries another credential's later one.
        let capped = principal
            .ends_at(now)
            .filter(|&e| e < now + self.ttl.as_secs());
        let exp = capped.unwrap_or(now + self.ttl.as_secs());
        claims.insert("iss".into(), self.issuer.clone());
        // The audience is part of the cache key (it is in `text`): an assertion minted for
        // one upstream is never reused for another.
        if let Some(aud) = audience {
            claims.insert("aud".into(), Value::from(aud));
        } else if let Some(aud) = &self.audience {
            claims.insert("aud".into(), aud.clone());
        }
        // A map of JSON values always serializes.
        let mut text = serde_json::to_string(&claims).map_err(|_| MintFailed)?;
        if let Some(e) = capped {
            let _ = write!(text, " exp={e}");
        }
        let key = self.hasher.hash_one(text.as_bytes());
        if let Some(m) = self.cache.get(&key)
            && *m.claims == *text
        {
            return Ok(Some(m.value.clone()));
        }
        claims.insert("iat".into(), Value::from(now));
        claims.insert("exp".into(), Value::from(exp));
        let token = match self.key.sign(&Value::Object(claims)) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "Cannot sign the identity assertion");
                return Err(MintFailed);
            }
        };
        // Base64url and dots: always a valid header value.
        let value = HeaderValue::from_str(&token).map_err(|_| MintFailed)?;
        self.cache.insert(
            key,
            Arc::new(Minted {
                claims: text.into(),
                value: value.clone(),
            }),
        );
        Ok(Some(value))
    }
}

/// The assertion could not be minted (the cause is logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MintFailed;

/// Loads a private key; errors name the field.
fn load_key(base_dir: &Path, file: &Path, alg: &str, kid: &str) -> Result<SigningKey, FieldError> {
    let Some(alg) = parse_alg(alg).filter(|a| !alg_name(*a).starts_with("HS")) else {
        return Err(FieldError::new(
            "algorithm",
            format!(
                "`{alg}`: ES256, ES384, EdDSA, RS256/384/512 or PS256/384/512 (an upstream verifies with the public key)"
            ),
        ));
    };
    if kid.is_empty() || !kid.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(
            "kid",
            "visible ASCII characters, not empty",
        ));
    }
    let path = base_dir.join(file);
    let bytes = crate::config::files::read(&path).map_err(|e| {
        FieldError::new(
            "key_file",
            format!("cannot read {}: {e}", crate::secret::shown_path(file)),
        )
    })?;
    SigningKey::from_private_key(&bytes, alg, kid).map_err(|e| {
        FieldError::new(
            "key_file",
            format!("{}: {e}", crate::secret::shown_path(file)),
        )
    })
}
