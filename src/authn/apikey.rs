//! API keys: high-entropy random strings, stored only as SHA-256 hashes (in a watched YAML file
//! or the config), each granting a fixed principal.
//!
//! Invariants: a presented key is hashed once and found through a map keyed by the first bytes
//! of its hash (no scan over every key, no timing that depends on which key is closest); the
//! full 32-byte hash is then compared in constant time. A key that is disabled or past its
//! `expires` is refused like an unknown one (401), and the file's problems name its line.
//!
//! Why SHA-256 and not a password hash: keys made by `portcullis apikey new` carry 256 bits of
//! randomness, so a fast hash leaks nothing guessable, and a slow hash would put milliseconds
//! of CPU on every request. Shared secrets written by hand must be at least
//! [`MIN_SECRET_BYTES`] long.

use crate::config::FieldError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::CompileError;
use super::principal::{Principal, PrincipalKind};
use crate::config::diagnostic::Diagnostic;
use crate::config::raw::{RawApiKey, RawApiKeyAuth, RawApiKeyFile, RawPrincipalKind};

/// Shortest shared secret accepted in the config.
pub const MIN_SECRET_BYTES: usize = 16;

/// The prefix of generated keys (recognisable by secret scanners and in support tickets).
pub const KEY_PREFIX: &str = "pck_";

/// The compiled keys of one authenticator.
#[derive(Default)]
pub struct ApiKeys {
    by_prefix: HashMap<u64, Box<[u32]>>,
    keys: Vec<Key>,
}

#[derive(Debug)]
struct Key {
    digest: [u8; 32],
    principal: Arc<Principal>,
    expires_at: Option<u64>,
    enabled: bool,
}

/// Why a presented key is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyError {
    /// No key has this hash.
    Unknown,
    /// The key is disabled.
    Disabled,
    /// The key expired.
    Expired,
}

// === impl ApiKeys ===

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes of possibly weak shared secrets stay out of debug output.
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl ApiKeys {
    /// Compiles inline keys and the key file (added to `watched`).
    pub fn compile(
        raw: &RawApiKeyAuth,
        authenticator: &Arc<str>,
        base_dir: &Path,
        watched: &mut Vec<PathBuf>,
    ) -> Result<Self, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut out = Self::default();
        let mut ids: HashMap<String, String> = HashMap::new();
        for (i, k) in raw.keys.iter().enumerate() {
            let at = format!("keys[{i}]");
            match compile_key(k, authenticator, Some((base_dir, &mut *watched))) {
                Ok(key) => {
                    if let Some(e) = out.add(key, &k.id, &at, &mut ids) {
                        errors.push(CompileError::Field(e.under(&at)));
                    }
                }
                Err(e) => errors.push(CompileError::Field(e.under(&at))),
            }
        }
        if let Some(file) = &raw.keys_file {
            let path = base_dir.join(file);
            watched.push(path.clone());
            let display = path.display().to_string();
            match crate::config::load::read_yaml::<RawApiKeyFile>(&path, display) {
                // Why: a file that cannot be read has no line to point at: the error names
                // the config's `keys_file` field that names it (it said `nope.yaml:0:0`).
                // Regression: tests (it) check::unreadable_files_name_the_field_that_names_them
                Err(d) if d.line == 0 => errors.push(CompileError::Field(FieldError::new(
                    "keys_file",
                    format!("`{}`: {}", crate::secret::shown_path(&path), d.message),
                ))),
                // The parser quotes what it could not read: here, maybe a key.
                Err(mut d) => {
                    d.message = crate::secret::without_values(&d.message);
                    errors.push(CompileError::File(d));
                }
                // Why: an emptied file (a `>` where `>>` was meant, a truncated write) was
                // applied live and revoked every key; policy files are refused the same way.
                // Regression: tests (it)
                // credentials::api_key_file_edits_apply_on_reload_and_a_broken_file_keeps_the_old_keys
                Ok((src, parsed)) if parsed.keys.is_empty() => {
                    errors.push(CompileError::File(Diagnostic::at(
                        &src.display,
                        &src.index,
                        "keys",
                        "the key file holds no key; an empty file is refused so that a \
                         truncated one never revokes every key (to accept none, remove \
                         `keys_file`)",
                    )));
                }
                Ok((src, parsed)) => {
                    // Why: a file that is the list alone (what `apikey new … >>` makes) has no
                    // `keys` field, so every error was located at 1:1 instead of its entry.
                    // Regression: tests (it) credentials::api_key_file_errors_point_at_their_entry
                    let list = if src.index.has("keys") { "keys" } else { "" };
                    for (i, k) in parsed.keys.iter().enumerate() {
                        let diag = |e: FieldError| {
                            let e = e.under(&format!("{list}[{i}]"));
                            CompileError::File(Diagnostic::at(
                                &src.display,
                                &src.index,
                                &e.field,
                                e.message,
                            ))
                        };
                        if k.secret.is_some() {
                            errors.push(diag(FieldError::new(
                                "secret",
                                "a key file holds hashes only; use `hash` (see `portcullis apikey new`)",
                            )));
                            continue;
                        }
                        match compile_key(k, authenticator, None) {
                            Ok(key) => {
                                let place = format!("{}: {list}[{i}]", src.display);
                                if let Some(e) = out.add(key, &k.id, &place, &mut ids) {
                                    errors.push(diag(e));
                                }
                            }
                            Err(e) => errors.push(diag(e)),
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Adds a key unless its id or hash is taken; returns the field and message otherwise.
    fn add(
        &mut self,
        key: Key,
        id: &str,
        place: &str,
        ids: &mut HashMap<String, String>,
    ) -> Option<FieldError> {
        if let Some(first) = ids.get(id) {
            return Some(FieldError::new(
                "id",
                format!("duplicate api key id `{id}` (also {first})"),
            ));
        }
        let bucket = prefix(&key.digest);
        let same = self.by_prefix.get(&bucket).is_some_and(|l| {
            l.iter().any(|&i| {
                self.keys
                    .get(i as usize)
                    .is_some_and(|k| k.digest == key.digest)
            })
        });
        if same {
            return Some(FieldError::new("hash", "the same key is listed twice"));
        }
        let Ok(index) = u32::try_from(self.keys.len()) else {
            return Some(FieldError::new("id", "too many api keys"));
        };
        ids.insert(id.to_owned(), place.to_owned());
        let mut list = self
            .by_prefix
            .remove(&bucket)
            .map(Vec::from)
            .unwrap_or_default();
        list.push(index);
        self.by_prefix.insert(bucket, list.into());
        self.keys.push(key);
        None
    }

    /// The principal of a presented key.
    pub fn verify(&self, presented: &str, now: u64) -> Result<Arc<Principal>, KeyError> {
        let digest = crate::secret::sha256(presented.as_bytes());
        let candidates = self
            .by_prefix
            .get(&prefix(&digest))
            .ok_or(KeyError::Unknown)?;
        let key = candidates
            .iter()
            .filter_map(|&i| self.keys.get(i as usize))
            .find(|k| crate::secret::ct_eq(&k.digest, &digest))
            .ok_or(KeyError::Unknown)?;
        if !key.enabled {
            return Err(KeyError::Disabled);
        }
        if key.expires_at.is_some_and(|t| now >= t) {
            return Err(KeyError::Expired);
        }
        Ok(Arc::clone(&key.principal))
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn prefix(digest: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(b)
}

/// One key: its hash (parsed, or computed from the secret) and the principal it grants.
fn compile_key(
    k: &RawApiKey,
    authenticator: &Arc<str>,
    base_dir: Option<(&Path, &mut Vec<PathBuf>)>,
) -> Result<Key, FieldError> {
    if k.id.trim().is_empty() || k.id.chars().any(|c| c.is_control()) {
        return Err(FieldError::new("id", "must be a non-empty visible string"));
    }
    if k.owner.trim().is_empty() || k.owner.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(
            "owner",
            "must be a non-empty visible string",
        ));
    }
    let digest = match (&k.hash, &k.secret, base_dir) {
        (Some(_), Some(_), _) | (None, None, _) => {
            return Err(FieldError::new(
                "hash",
                "exactly one of `hash` and `secret` is required",
            ));
        }
        (Some(h), None, _) => parse_hash(h).map_err(|m| FieldError::new("hash", m))?,
        (None, Some(s), Some((dir, watched))) => {
            let secret =
                crate::secret::read(s, dir, watched).map_err(|m| FieldError::new("secret", m))?;
            if secret.expose().len() < MIN_SECRET_BYTES {
                return Err(FieldError::new(
                    "secret",
                    format!("a shared secret must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            crate::secret::sha256(secret.expose())
        }
        (None, Some(_), None) => return Err(FieldError::new("secret", "not allowed here")),
    };
    let expires_at = match &k.expires {
        None => None,
        Some(t) => Some(
            humantime::parse_rfc3339_weak(t)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                // Not quoted: this file holds keys, and a value in the wrong place may be one.
                .ok_or(FieldError::new(
                    "expires",
                    "not an RFC 3339 time such as 2027-06-30T00:00:00Z",
                ))?,
        ),
    };
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(k.owner.clone()));
    claims.insert("api_key_id".into(), Value::String(k.id.clone()));
    if let Some(p) = &k.plan {
        claims.insert("plan".into(), Value::String(p.clone()));
    }
    if let Some(t) = &k.tenant {
        claims.insert("tenant".into(), Value::String(t.clone()));
    }
    if !k.scopes.is_empty() {
        claims.insert("scope".into(), Value::String(k.scopes.join(" ")));
    }
    if !k.roles.is_empty() {
        claims.insert(
            "roles".into(),
            Value::Array(k.roles.iter().cloned().map(Value::String).collect()),
        );
    }
    let principal = Principal {
        id: k.owner.as_str().into(),
        kind: match k.kind {
            RawPrincipalKind::User => PrincipalKind::User,
            RawPrincipalKind::Machine => PrincipalKind::Machine,
        },
        authenticator: Arc::clone(authenticator),
        issuer: None,
        scopes: k.scopes.iter().map(|s| s.as_str().into()).collect(),
        roles: k.roles.iter().map(|s| s.as_str().into()).collect(),
        tenant: k.tenant.as_deref().map(Into::into),
        api_key_id: Some(k.id.as_str().into()),
        claims,
        expires_at,
        valid_until: expires_at,
        derived: Default::default(),
    };
    Ok(Key {
        digest,
        principal: Arc::new(principal),
        expires_at,
        enabled: k.enabled,
    })
}

/// Parses `sha256:<64 hex digits>`.
pub fn parse_hash(h: &str) -> Result<[u8; 32], String> {
    let hex = h.strip_prefix("sha256:").ok_or_else(|| {
        "expected `sha256:` followed by 64 hex digits (see `portcullis apikey new`)".to_owned()
    })?;
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err("expected 64 hex digits after `sha256:`".into());
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = hex_val(pair[0]);
        let lo = hex_val(pair[1]);
        match (hi, lo) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return Err("expected 64 hex digits after `sha256:`".into()),
        }
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `sha256:<hex>` of a key, as the key file stores it.
pub fn hash_of(key: &str) -> String {
    format!(
        "sha256:{}",
        crate::secret::hex(&crate::secret::sha256(key.as_bytes()))
    )
}

/// A fresh key: the prefix and 32 random bytes, base64url.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| "no randomness available".to_owned())?;
    Ok(format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(hash: &str) -> RawApiKey {
        RawApiKey {
            id: "k1".into(),
            hash: Some(hash.into()),
            secret: None,
            owner: "svc".into(),
            kind: RawPrincipalKind::Machine,
            scopes: vec!["read".into()],
            roles: vec![],
            plan: Some("gold".into()),
            tenant: None,
            expires: None,
            enabled: true,
        }
    }

    #[test]
    fn hash_roundtrip_and_lookup() {
        let key = generate().unwrap();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key.len(), KEY_PREFIX.len() + 43);
        let mut keys = ApiKeys::default();
        let k = compile_key(&raw(&hash_of(&key)), &"a".into(), None).unwrap();
        assert!(keys.add(k, "k1", "here", &mut HashMap::new()).is_none());
        let p = keys.verify(&key, 0).unwrap();
        assert_eq!(&*p.id, "svc");
        assert_eq!(p.api_key_id.as_deref(), Some("k1"));
        assert_eq!(p.kind, PrincipalKind::Machine);
        assert_eq!(keys.verify("pck_other", 0), Err(KeyError::Unknown));
        assert_eq!(
            keys.verify(&key[..key.len() - 1], 0),
            Err(KeyError::Unknown)
        );
    }

    #[test]
    fn bad_hashes_are_refused() {
        for h in [
            "deadbeef",
            "sha256:abc",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            &format!("sha256:{}", "g".repeat(64)),
        ] {
            assert!(parse_hash(h).is_err(), "{h}");
        }
        assert!(parse_hash(&format!("sha256:{}", "aB".repeat(32))).is_ok());
    }

    #[test]
    fn disabled_and_expired() {
        let mut r = raw(&hash_of("pck_x"));
        r.enabled = false;
        let mut keys = ApiKeys::default();
        keys.add(
            compile_key(&r, &"a".into(), None).unwrap(),
            "k1",
            "",
            &mut HashMap::new(),
        );
        assert_eq!(keys.verify("pck_x", 0), Err(KeyError::Disabled));
        let mut r = raw(&hash_of("pck_y"));
        r.id = "k2".into();
        r.expires = Some("2001-01-01T00:00:00Z".into());
        keys.add(
            compile_key(&r, &"a".into(), None).unwrap(),
            "k2",
            "",
            &mut HashMap::new(),
        );
        assert_eq!(keys.verify("pck_y", 978_307_199).map(|_| ()), Ok(()));
        assert_eq!(keys.verify("pck_y", 978_307_200), Err(KeyError::Expired));
    }
}
