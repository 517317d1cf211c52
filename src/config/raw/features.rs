//! The signed identity assertion, rate limits and delegates.

use super::*;

/// The signed identity assertion.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    /// The header it is sent in (stripped from client requests). Default
    /// `x-portcullis-assertion`.
    #[serde(default)]
    pub header: Option<String>,
    /// The signing key: a PKCS#8 PEM private key file (`portcullis keys new` writes one),
    /// watched.
    pub key_file: PathBuf,
    /// ES256, ES384, EdDSA, RS256/384/512 or PS256/384/512.
    pub algorithm: String,
    /// The key id in the token header and the JWKS.
    pub kid: String,
    /// Keys no longer signing but still published, so assertions signed before a rotation
    /// verify until they expire.
    #[serde(default)]
    pub retired_keys: Vec<RawRetiredKey>,
    /// `iss` of every assertion.
    pub issuer: String,
    /// `aud` of every assertion, if set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Lifetime (`exp - iat`), whole seconds. Default 60s; at most 1h. An assertion is
    /// reused for the same identity during the first half of its life.
    #[serde(default = "default_assertion_ttl", deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Claims from templates (the identity header variables). A template that is a single
    /// variable keeps its JSON shape (arrays stay arrays). `sub` defaults to
    /// `{principal.id}` and `authenticator` to `{principal.authenticator}` (an id is unique
    /// only within its authenticator); `iss`, `aud`, `iat` and `exp` are the gateway's, and
    /// `exp` is never later than the credential's own expiry.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// A retired assertion key: published, never used to sign.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetiredKey {
    /// Its PKCS#8 PEM private key file.
    pub key_file: PathBuf,
    /// Its algorithm.
    pub algorithm: String,
    /// Its key id.
    pub kid: String,
}

fn default_assertion_ttl() -> Duration {
    Duration::from_secs(60)
}

/// A rate limit (GCRA): `requests` per `per` on average, with bursts of up to `burst`,
/// counted separately for each value of `key`. Requests over it get 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// What is counted separately: `principal` (anonymous requests by client address),
    /// `api_key` (the key's id; other requests by principal), `client_ip` (IPv6 by /64),
    /// `route` (one budget for everyone on the rule), `header:NAME` (believed only from
    /// `server.trusted_proxies`: a client could pick a new value per request) or
    /// `claim:PATH`; when absent or not believed, by client address.
    pub key: String,
    /// Requests allowed per `per`, on average.
    pub requests: u32,
    /// The period `requests` are counted over: `1s`, `1m`, `1h`.
    #[serde(deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub per: Duration,
    /// How many requests may come at once. Default: `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// An external authorization service a rule can ask.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDelegate {
    /// Its ext_authz gRPC endpoint: `http://host:port` (h2c) or `https://host:port`.
    pub grpc: String,
    /// Each call's deadline, connection included. Default 200ms.
    #[schemars(with = "String")]
    #[serde(default = "default_delegate_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long an answer is reused for the same rule and the same request as the delegate
    /// was told it: client address, method, host, path and query, scheme, every header sent
    /// (the credential among them), principal (never past the credential's expiry). 0
    /// disables. Default 30s.
    #[schemars(with = "String")]
    #[serde(default = "default_delegate_cache_ttl", deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// Most answers cached. Default 10000.
    #[serde(default = "default_delegate_cache_entries")]
    pub cache_max_entries: u64,
    /// When it fails, times out or answers nonsense: `deny` (503 `delegate_unavailable`, the
    /// default) or `allow`.
    #[serde(default)]
    pub failure_mode: RawFailureMode,
    /// Headers its OK answer may set upstream; others are ignored. These names are removed
    /// from every client request, like identity headers.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// What a failed external call means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawFailureMode {
    /// Refuse (503).
    #[default]
    Deny,
    /// Let the request through, counted and logged.
    Allow,
}

fn default_delegate_timeout() -> Duration {
    Duration::from_millis(200)
}

fn default_delegate_cache_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_delegate_cache_entries() -> u64 {
    10_000
}
