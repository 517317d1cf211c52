//! JWT authentication: the token's `iss` picks one configured provider (an unknown issuer is
//! refused without any network traffic); that provider's keys, algorithms and claim rules alone
//! decide. A `kid` is looked up only among the chosen provider's keys, so one issuer's key never
//! verifies another issuer's token.
//!
//! Order of checks: size → structure and header (`alg`, `crit`, `enc`, repeated names) →
//! issuer → algorithm and `typ` the provider accepts → key → signature → claims → principal.
//! Nothing from the payload is trusted before the signature verifies; the issuer is read
//! first only to choose among configured providers. A token with a `kid` is verified by the
//! key with that `kid`, or failing one, by keys without a `kid`; a token without `kid` only by
//! keys without one.

pub mod keys;
pub mod mint;
pub mod remote;
pub mod verify;

use crate::config::FieldError;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use jsonwebtoken::Algorithm;

use self::keys::{AlgSet, KeyFamily, KeySet, VerifyKey};
use self::remote::{RemoteKeys, RemoteSource};
use self::verify::{ClaimRules, TokenError};
use super::http_client::HttpClient;
use super::principal::{Mapping, Principal};
use crate::config::raw::{RawJwt, RawKey, RawProvider};
use crate::secret::sha256;

/// A compiled JWT authenticator.
#[derive(Debug)]
pub struct JwtAuthenticator {
    /// Longest token accepted.
    pub max_token_bytes: usize,
    providers: Vec<Provider>,
    by_issuer: HashMap<Box<str>, usize>,
}

/// One trusted issuer.
#[derive(Debug)]
pub struct Provider {
    /// The exact `iss`.
    pub issuer: Arc<str>,
    algorithms: AlgSet,
    /// Accepted `typ` values, lowercase without `application/` (empty: any).
    types: Box<[Box<str>]>,
    static_keys: KeySet,
    /// The fetched keys, if the provider has a remote source.
    pub remote: Option<Arc<RemoteKeys>>,
    /// The remote source is marked `optional`: readiness waits for it only up to
    /// `fetch.startup_timeout`.
    remote_optional: bool,
    rules: ClaimRules,
    mapping: Mapping,
}

/// A verified token.
#[derive(Debug)]
pub struct Verified {
    /// Who it speaks for.
    pub principal: Principal,
    /// `exp` plus leeway: from this Unix second on, the token is refused.
    pub valid_until: Option<u64>,
    /// The key that verified it.
    pub key: Arc<VerifyKey>,
}

/// Why verification could not finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// The token is invalid (401).
    Token(TokenError),
    /// The provider has no keys at all yet: the key server has been unreachable (503).
    KeysUnavailable,
}

// === impl JwtAuthenticator ===

/// The most clock skew a `leeway` tolerates: past it, expired tokens stay valid for long.
pub const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// Why a longer `leeway` is refused.
pub const LEEWAY_TOO_LONG: &str =
    "at most 10m: a clock further off is to be fixed, not tolerated (expired tokens would pass)";

impl JwtAuthenticator {
    /// Compiles the raw config; `previous` lends remote key sets whose source is unchanged.
    pub fn compile(
        raw: &RawJwt,
        base_dir: &Path,
        previous: Option<&Self>,
        watched: &mut Vec<std::path::PathBuf>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut providers = Vec::with_capacity(raw.providers.len());
        let mut by_issuer = HashMap::new();
        if raw.providers.is_empty() {
            errors.push(FieldError::new(
                "providers",
                "at least one provider is required",
            ));
        }
        for (i, p) in raw.providers.iter().enumerate() {
            let at = |f: &str| format!("providers[{i}].{f}");
            if let Some(first) = by_issuer.insert(p.issuer.as_str().into(), i) {
                errors.push(FieldError::new(
                    at("issuer"),
                    format!("issuer also configured in providers[{first}]"),
                ));
            }
            let prev = previous.and_then(|a| a.providers.iter().find(|x| *x.issuer == *p.issuer));
            match Provider::compile(p, base_dir, prev, watched) {
                Ok(pr) => providers.push(pr),
                Err(es) => {
                    errors.extend(es.into_iter().map(|e| e.under(&format!("providers[{i}]"))))
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            max_token_bytes: raw.max_token_bytes,
            providers,
            by_issuer,
        })
    }

    /// The providers.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }

    /// A digest of every statically configured key, and of the CA each key URL is fetched
    /// under: a cache is carried across a reload only when this is unchanged, so a key removed
    /// from a file stops its cached tokens at once.
    ///
    /// Why the CA: a changed CA file makes a new remote key set, fetched afresh, which never
    /// learns what the old one had. A token cached under a key the identity provider had
    /// since dropped stayed valid until `revalidate_after`, where a refetch of the same set
    /// revokes it at once. Regression: tests (it) jwt::a_changed_jwks_ca_drops_cached_tokens
    pub fn keys_fingerprint(&self) -> [u8; 32] {
        let mut d = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for p in &self.providers {
            d.update(p.issuer.as_bytes());
            p.static_keys.fingerprint(&mut d);
            if let Some(ca) = p.remote.as_ref().and_then(|r| r.ca_digest()) {
                d.update(ca);
            }
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(d.finish().as_ref());
        out
    }

    /// Verifies a token (no cache here). `now` is Unix seconds.
    pub async fn verify(
        &self,
        token: &str,
        authenticator: &Arc<str>,
        now: u64,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Verified, VerifyError> {
        let bad = VerifyError::Token;
        if token.len() > self.max_token_bytes {
            return Err(bad(TokenError::TooLarge));
        }
        let parsed = verify::parse(token).map_err(bad)?;
        let issuer = match parsed.claims.get("iss") {
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(_) => return Err(bad(TokenError::ClaimType)),
            None => return Err(bad(TokenError::UnknownIssuer)),
        };
        let provider = self
            .by_issuer
            .get(issuer)
            .and_then(|&i| self.providers.get(i))
            .ok_or(bad(TokenError::UnknownIssuer))?;
        if !provider.algorithms.contains(parsed.alg) {
            return Err(bad(TokenError::AlgorithmNotAllowed));
        }
        // Why: an ID token (`typ: JWT`) of the same issuer and audience must not pass where
        // access tokens (`at+jwt`, RFC 9068 §4) are required.
        // Regression: tests::token_type_is_checked_where_required
        if !verify::type_accepted(parsed.typ.as_deref(), &provider.types) {
            return Err(bad(TokenError::TypeNotAccepted));
        }
        let key = provider
            .find_key(
                parsed.alg,
                parsed.kid.as_deref(),
                parsed.message,
                parsed.signature,
                deadline,
            )
            .await?;
        let exp = verify::check_claims(&parsed.claims, &provider.rules, now).map_err(bad)?;
        let valid_until = exp.map(|exp| exp.saturating_add(provider.rules.leeway));
        let mut principal = provider
            .mapping
            .principal(
                parsed.claims,
                authenticator,
                Some(Arc::clone(&provider.issuer)),
                exp,
            )
            .map_err(|_| bad(TokenError::NoPrincipal))?;
        principal.valid_until = valid_until;
        Ok(Verified {
            principal,
            valid_until,
            key,
        })
    }
}

// === impl Provider ===

impl Provider {
    fn compile(
        raw: &RawProvider,
        base_dir: &Path,
        previous: Option<&Self>,
        watched: &mut Vec<std::path::PathBuf>,
    ) -> Result<Self, Vec<FieldError>> {
        let mut errors: Vec<FieldError> = Vec::new();
        if raw.issuer.is_empty() {
            errors.push(FieldError::new("issuer", "must not be empty"));
        }
        // Why: `leeway: 3650d` passed `check`, and a token expired 300 days before was
        // allowed; `max_lifetime: 0s` passed too, and refused every token.
        // Regression: tests (it) check::invalid_configs_print_expected_diagnostics (bad-jwt-times)
        if raw.leeway > MAX_LEEWAY {
            errors.push(FieldError::new("leeway", LEEWAY_TOO_LONG));
        }
        if raw.max_lifetime.is_some_and(|d| d.as_secs() == 0) {
            errors.push(FieldError::new(
                "max_lifetime",
                "must be at least 1s: 0 would refuse every token",
            ));
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
            errors.push(FieldError::new(
                "audiences",
                "at least one non-empty audience is required: a token for another service must not pass",
            ));
        }
        let f = &raw.fetch;
        for (field, value, min) in [
            (
                "fetch.unknown_kid_cooldown",
                f.unknown_kid_cooldown,
                std::time::Duration::from_secs(1),
            ),
            ("fetch.retry", f.retry, std::time::Duration::from_millis(50)),
            (
                "fetch.min_refresh",
                f.min_refresh,
                std::time::Duration::from_millis(50),
            ),
            (
                "fetch.timeout",
                f.timeout,
                std::time::Duration::from_millis(50),
            ),
        ] {
            if value < min {
                errors.push(FieldError::new(
                    field,
                    format!("must be at least {}", humantime::format_duration(min)),
                ));
            }
        }
        if f.max_bytes < 1024 {
            errors.push(FieldError::new("fetch.max_bytes", "must be at least 1024"));
        }
        let algorithms = if raw.algorithms.is_empty() {
            AlgSet::all()
        } else {
            AlgSet::of(raw.algorithms.iter().map(|a| keys::algorithm(*a)))
        };
        let mut types: Vec<Box<str>> = Vec::with_capacity(raw.token_types.len());
        for (j, t) in raw.token_types.iter().enumerate() {
            let bare = t
                .get(.."application/".len())
                .filter(|p| p.eq_ignore_ascii_case("application/"))
                .map_or(t.as_str(), |p| &t[p.len()..]);
            if bare.is_empty() || bare.contains('/') || !bare.bytes().all(|b| b.is_ascii_graphic())
            {
                errors.push(FieldError::new(
                    format!("token_types[{j}]"),
                    format!("`{t}` is not a media type such as `at+jwt` or `JWT`"),
                ));
            } else {
                types.push(bare.to_ascii_lowercase().into());
            }
        }
        let issuer: Arc<str> = raw.issuer.as_str().into();
        let mut static_keys: Vec<VerifyKey> = Vec::new();
        let mut remote = None;
        let mut remote_optional = false;
        if raw.keys.is_empty() {
            errors.push(FieldError::new(
                "keys",
                "at least one key source is required",
            ));
        }
        for (j, k) in raw.keys.iter().enumerate() {
            let at = |f: &str| format!("keys[{j}].{f}");
            let key_err = |f: &str, e: keys::KeyError| FieldError::new(at(f), e.to_string());
            match k {
                RawKey::Pem(p) => {
                    match keys::from_pem(p.text.as_bytes(), p.kid.as_deref(), &p.algorithms) {
                        Ok(k) => static_keys.push(k),
                        Err(e) => errors.push(key_err("pem.text", e)),
                    }
                }
                RawKey::PemFile(p) => {
                    let path = base_dir.join(&p.path);
                    watched.push(path.clone());
                    match crate::config::files::read(&path) {
                        Ok(b) => match keys::from_pem(&b, p.kid.as_deref(), &p.algorithms) {
                            Ok(k) => static_keys.push(k),
                            Err(e) => errors.push(key_err("pem_file.path", e)),
                        },
                        Err(e) => errors.push(FieldError::new(
                            at("pem_file.path"),
                            format!("cannot read {}: {e}", crate::secret::shown_path(&path)),
                        )),
                    }
                }
                RawKey::Jwk(t) => match keys::from_jwk_json(&t.text, false) {
                    // Why: an `oct` JWK written in the config is an HMAC secret in the config
                    // (shown by `GET /config`'s readers, kept in repositories), which the
                    // `hmac` source exists to keep out. Regression: tests::inline_hmac_jwk_refused
                    Ok(k) if k.family == keys::KeyFamily::Hmac => errors.push(FieldError::new(
                        at("jwk.text"),
                        "an `oct` (HMAC) key is a secret: give it as `hmac: {secret: {file: PATH}}` or `{env: VARIABLE}`, never in the config",
                    )),
                    Ok(k) => static_keys.push(k),
                    Err(e) => errors.push(key_err("jwk.text", e)),
                },
                RawKey::JwksFile(f) => {
                    let path = base_dir.join(&f.path);
                    watched.push(path.clone());
                    match crate::config::files::read(&path) {
                        Ok(b) => match keys::parse_jwks(&b, false) {
                            Ok((ks, _)) if ks.is_empty() => errors.push(FieldError::new(
                                at("jwks_file.path"),
                                "no usable signing keys",
                            )),
                            Ok((ks, _)) => static_keys.extend(ks),
                            Err(e) => errors.push(key_err("jwks_file.path", e)),
                        },
                        Err(e) => errors.push(FieldError::new(
                            at("jwks_file.path"),
                            format!("cannot read {}: {e}", crate::secret::shown_path(&path)),
                        )),
                    }
                }
                RawKey::Hmac(h) => match crate::secret::read(&h.secret, base_dir, watched) {
                    Ok(secret) => {
                        match keys::from_hmac(secret.expose(), h.kid.as_deref(), &h.algorithms) {
                            Ok(k) => static_keys.push(k),
                            Err(e) => errors.push(key_err("hmac.secret", e)),
                        }
                    }
                    Err(m) => errors.push(FieldError::new(at("hmac.secret"), m)),
                },
                RawKey::JwksUrl(u) | RawKey::OidcDiscovery(u) => {
                    let (field, source) = match k {
                        RawKey::JwksUrl(_) => (
                            "jwks_url",
                            RemoteSource::parse_url(&u.url).map(RemoteSource::Jwks),
                        ),
                        _ => (
                            "oidc_discovery",
                            RemoteSource::discovery_url(&u.url).map(RemoteSource::Discovery),
                        ),
                    };
                    if remote.is_some() {
                        errors.push(FieldError::new(
                            at(field),
                            "only one remote key source per provider",
                        ));
                        continue;
                    }
                    let source = match source {
                        Ok(s) => s,
                        Err(m) => {
                            errors.push(FieldError::new(at(&format!("{field}.url")), m));
                            continue;
                        }
                    };
                    remote_optional = u.optional;
                    let ca = u.ca_file.as_ref().map(|c| base_dir.join(c));
                    if let Some(ca) = &ca {
                        watched.push(ca.clone());
                    }
                    let ca_id = ca
                        .as_ref()
                        .map(|p| (p.clone(), sha256(&crate::config::files::read(p).unwrap_or_default())));
                    if let Some(prev) = previous.and_then(|p| p.remote.as_ref())
                        && prev.same_source(&source, &issuer, &raw.fetch, ca_id.as_ref())
                    {
                        remote = Some(Arc::clone(prev));
                        continue;
                    }
                    let carried = previous
                        .and_then(|p| p.remote.as_ref())
                        .filter(|prev| prev.same_origin(&source, &issuer, ca_id.as_ref()));
                    match crate::tls::server::client_config(ca.as_deref(), false) {
                        Ok(tls) => {
                            let client = HttpClient::new(&tls);
                            remote = Some(Arc::new(match carried {
                                Some(prev) => prev.retuned(client, raw.fetch.clone()),
                                None => RemoteKeys::new(
                                    source,
                                    Arc::clone(&issuer),
                                    client,
                                    raw.fetch.clone(),
                                    ca_id,
                                ),
                            }));
                        }
                        Err(e) => errors.push(FieldError::new(
                            at(&format!("{field}.ca_file")),
                            e.to_string(),
                        )),
                    }
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let static_keys = KeySet::new(
            static_keys
                .into_iter()
                .map(|k| k.for_issuer(&issuer))
                .collect(),
        );
        Ok(Self {
            issuer,
            algorithms,
            types: types.into(),
            static_keys,
            remote,
            remote_optional,
            rules: ClaimRules {
                leeway: raw.leeway.as_secs(),
                require_exp: raw.require_exp,
                max_lifetime: raw.max_lifetime.map(|d| d.as_secs()),
                audiences: raw.audiences.iter().map(|a| a.as_str().into()).collect(),
                required: raw
                    .required_claims
                    .iter()
                    .map(|(k, t)| (k.as_str().into(), *t))
                    .collect(),
            },
            mapping: Mapping::compile(&raw.principal),
        })
    }

    /// Whether `/readyz` may report ready for this provider: no remote source, or one whose
    /// keys were fetched at least once, or an `optional` one whose startup timeout passed.
    pub fn is_ready(&self) -> bool {
        self.remote
            .as_ref()
            .is_none_or(|r| r.has_keys() || (self.remote_optional && r.startup_timed_out()))
    }

    /// Whether waiting for this provider's remote keys is over: fetched, or the startup
    /// timeout passed.
    pub fn keys_settled(&self) -> bool {
        self.remote
            .as_ref()
            .is_none_or(|r| r.has_keys() || r.startup_timed_out())
    }

    /// Finds the key that verifies the signature. An unknown `kid` triggers one rate-limited
    /// refetch of the remote keys, waited for until the request's `deadline` is near.
    async fn find_key(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        message: &str,
        signature: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Arc<VerifyKey>, VerifyError> {
        // Read before the keys: a first fetch storing its set in between must not make a
        // token without `kid`, looked up in the empty set, skip the look after the refetch.
        let had_keys = self.remote.as_ref().is_some_and(|r| r.has_keys());
        let mut lookup = self.try_keys(alg, kid, message, signature);
        if let Some(remote) = &self.remote
            && matches!(lookup, Lookup::NoKey | Lookup::NoneVerified)
        {
            // A new `kid` (rotation) or no keys yet: one refetch, rate-limited inside.
            let budget = deadline
                .map(|d| crate::request::facts::call_budget(std::time::Duration::MAX, Some(d)));
            // Why looked at again whatever the refetch came to: keys that arrived while the
            // request waited (a fetch under way, then the door's deadline near) verified
            // nothing; the token was refused as signed by an unknown key.
            // Regression: tests (it) jwt::keys_that_arrive_while_a_door_waits_verify_its_token
            if kid.is_some() || !had_keys {
                remote.refetch_for_unknown_kid(budget).await;
                lookup = self.try_keys(alg, kid, message, signature);
            }
            // Why: until the remote set has been fetched once, no answer but "verified" is
            // final: the token may be signed by one of the keys never seen, whatever the
            // static keys say. 503 (try again), not 401; remote sets never hold HMAC keys.
            // Regression: tests::unfetched_remote_keys_are_not_masked_by_static_keys
            if !remote.has_keys()
                && !KeyFamily::Hmac.algorithms().contains(alg)
                && matches!(lookup, Lookup::NoKey | Lookup::NoneVerified)
            {
                return Err(VerifyError::KeysUnavailable);
            }
        }
        match lookup {
            Lookup::Verified(k) => Ok(k),
            Lookup::BadSignature | Lookup::NoneVerified => {
                Err(VerifyError::Token(TokenError::BadSignature))
            }
            Lookup::WrongAlgorithm => Err(VerifyError::Token(TokenError::AlgorithmNotAllowed)),
            Lookup::NoKey => Err(VerifyError::Token(TokenError::UnknownKey)),
        }
    }

    /// Tries this provider's keys: the one named by `kid`; failing that, keys without a `kid`
    /// that allow `alg`.
    fn try_keys(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        message: &str,
        signature: &str,
    ) -> Lookup {
        let remote = self.remote.as_ref().map(|r| r.keys());
        let sets = || std::iter::once(&self.static_keys).chain(remote.as_deref().map(|a| &**a));
        if let Some(kid) = kid {
            for set in sets() {
                if let Some(k) = set.by_kid(kid) {
                    if !k.algorithms.contains(alg) {
                        return Lookup::WrongAlgorithm;
                    }
                    return if check_signature(k, alg, message, signature) {
                        Lookup::Verified(Arc::clone(k))
                    } else {
                        Lookup::BadSignature
                    };
                }
            }
        }
        let mut candidates = false;
        // Why: each try is a signature check; a token without a usable `kid` must not make the
        // gateway try a large key set one by one. And a key with a `kid` verifies only tokens
        // naming it: a token without `kid` never reaches it.
        // Regression: tests::token_without_kid_tries_only_keys_without_kid
        let untagged = sets()
            .flat_map(|set| set.for_alg(alg))
            .filter(|k| k.kid.is_none())
            .take(MAX_KEYS_WITHOUT_KID);
        for k in untagged {
            candidates = true;
            if check_signature(k, alg, message, signature) {
                return Lookup::Verified(Arc::clone(k));
            }
        }
        if candidates {
            Lookup::NoneVerified
        } else {
            Lookup::NoKey
        }
    }
}

/// Most keys tried for a token whose `kid` names none.
const MAX_KEYS_WITHOUT_KID: usize = 4;

/// What a look through the known keys found.
enum Lookup {
    /// This key verifies the signature.
    Verified(Arc<VerifyKey>),
    /// The key the `kid` names does not verify it: final.
    BadSignature,
    /// The key the `kid` names does not allow the algorithm: final.
    WrongAlgorithm,
    /// Keys without a `kid` were tried and none verifies it; a key not yet fetched might.
    NoneVerified,
    /// No key to try.
    NoKey,
}

fn check_signature(key: &VerifyKey, alg: Algorithm, message: &str, signature: &str) -> bool {
    // Why: the key's algorithms were checked against its type at load; this second check keeps
    // a bug elsewhere from turning into algorithm confusion.
    key.algorithms.contains(alg)
        && key.family.algorithms().contains(alg)
        && jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key.key, alg)
            .unwrap_or(false)
}

#[cfg(test)]
mod tests;
