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
    #[serde(
        default = "default_assertion_ttl",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Claims from templates (the identity header variables). A template that is a single
    /// variable keeps its JSON shape (arrays stay arrays). `sub` defaults to
    /// `{principal.id}`, `authenticator` to `{principal.authenticator}`, `idp` to
    /// `{principal.issuer}` (absent for API keys) and `kind` to `{principal.kind}`: an id is
    /// unique only within its authenticator, issuer and kind; `iss`, `aud`, `iat` and `exp`
    /// are the gateway's, and
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
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    #[schemars(with = "String")]
    pub per: Duration,
    /// How many requests may come at once. Default: `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// A quota over a long window on top of the rate, say 10000 per `30d`: spent by the same
    /// requests, refilled continuously over its window, its whole allowance usable at once.
    #[serde(default)]
    pub quota: Option<RawQuota>,
    /// Where the budgets live: `local` (this process, the default) or `redis` (shared by
    /// every gateway using the same `redis:` server).
    #[serde(default)]
    pub backend: RawBackend,
    /// What a `redis` limit does when Redis fails (down, slow past `redis.timeout`,
    /// answering nonsense) or its circuit breaker is open: `allow` (fail open: counted in
    /// `portcullis_ratelimit_redis_fallback_total`, logged once per interval), `deny` (fail
    /// closed: 503 `rate_limit_unavailable`) or `local` (the default: this process's own
    /// budget for the same limit, as if the backend were `local`).
    #[serde(default)]
    pub on_redis_failure: RawRedisFailure,
    /// Tell allowed requests what is left: `RateLimit-Limit`, `RateLimit-Remaining` and
    /// `RateLimit-Reset` on their responses, as a 429 has them (at every door: the decision
    /// doors hand them to their peer for the client's response). Default `true`; a
    /// shadow-mode limit never sends them.
    #[serde(default = "yes")]
    pub headers: bool,
    /// Shadow mode: requests over the limit are counted (`portcullis_ratelimit_total` with
    /// `outcome="shadow_limited"`) and logged, never refused, so a limit can be tried on live
    /// traffic first.
    #[serde(default)]
    pub shadow: bool,
    /// In shadow mode, name the limit in this response header of requests it would have
    /// refused (e.g. `x-ratelimit-shadow`). Default: no header.
    #[serde(default)]
    pub shadow_header: Option<String>,
    /// Choose the rate by a tier: `claim:PATH` (an API key's `plan` is its claim `plan`).
    /// Requests whose value names no tier in `tiers` get the limit's own rate.
    #[serde(default)]
    pub tier: Option<String>,
    /// The rate (and quota) of each tier by name; each tier its own `requests`, `per`,
    /// `burst` and `quota`.
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTier>,
    /// Count only the requests a rule refuses (failed authentication, unmet requirements,
    /// conditions, delegates) instead of the ones it allows: a brute-force guard. Once over,
    /// the rule answers 429 before verifying any credential.
    #[serde(default)]
    pub count: RawCount,
    /// Most keys kept in this process (local budgets, and the fallback of a `redis` limit).
    /// Beyond it, keys back at a full burst are dropped first, then the ones nearest to it.
    /// Default 100000 (about 6 MB).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

/// A long-window quota.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    /// Requests per `per`.
    pub requests: u32,
    /// The window: `1d`, `30d`.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    #[schemars(with = "String")]
    pub per: Duration,
}

/// One tier's rate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTier {
    /// Requests allowed per `per`, on average.
    pub requests: u32,
    /// The period.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    #[schemars(with = "String")]
    pub per: Duration,
    /// How many requests may come at once. Default: `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// A long-window quota of this tier.
    #[serde(default)]
    pub quota: Option<RawQuota>,
}

/// Where a limit's budgets live.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawBackend {
    /// This process.
    #[default]
    Local,
    /// The `redis:` server, shared by every gateway using it.
    Redis,
}

/// What a Redis-backed limit does when Redis cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawRedisFailure {
    /// Let the request through (fail open).
    Allow,
    /// Refuse it with 503 (fail closed).
    Deny,
    /// Count it in this process's own budget for the limit.
    #[default]
    Local,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawCount {
    /// The requests its rule allows.
    #[default]
    Allowed,
    /// The requests its rule refuses (a brute-force guard).
    Failures,
}

fn default_max_keys() -> usize {
    100_000
}

/// The Redis `backend: redis` limits share: one server (`url`), a Redis Cluster (`cluster`)
/// or the master a Sentinel names (`sentinel`); exactly one of the three.
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// One server: `redis://host:port[/db]` or `rediss://host:port[/db]` (TLS, rustls, the
    /// system's roots). No credentials in the URL: use `username` and `password`.
    #[serde(default)]
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes, `redis://host:port` or `rediss://host:port` (all
    /// alike); the others are found from them. Each key lives on the node of its slot.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// The master a Redis Sentinel names, found again after a failover.
    #[serde(default)]
    pub sentinel: Option<RawRedisSentinel>,
    /// ACL user name on the Redis servers (not the sentinels), if not `default`.
    #[serde(default)]
    pub username: Option<String>,
    /// The Redis servers' password (not the sentinels'), from the environment or a file;
    /// never logged.
    #[serde(default)]
    pub password: Option<RawSecret>,
    /// Time for one limit check (a round trip), after which the limit's `on_redis_failure`
    /// decides. Default 5ms.
    #[serde(
        default = "default_redis_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Time for (re)connecting, in the background. Default 1s.
    #[serde(
        default = "default_redis_connect_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Consecutive failures after which the circuit breaker opens: no call is made (each
    /// limit's `on_redis_failure` decides at once) until `cool_down` has passed; then one
    /// request probes, and a success closes it. Default 5.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long the breaker stays open before a probe. Default 1s.
    #[serde(
        default = "default_breaker_cool_down",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub breaker_cool_down: Duration,
    /// Prefix of every key written. Default `portcullis:rl:`.
    #[serde(default = "default_redis_prefix")]
    pub key_prefix: String,
    /// PEM CA certificates the servers' (and sentinels') certificates must chain to, instead
    /// of the system's roots: a private CA. Needs `rediss://` URLs. Relative to the config
    /// file; watched.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate chain the gateway presents to the servers (and sentinels), for
    /// a Redis that requires one (`tls-auth-clients yes`); with `client_key`. Watched.
    #[serde(default)]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of `client_cert`. Watched; never logged.
    #[serde(default)]
    pub client_key: Option<std::path::PathBuf>,
}

impl fmt::Debug for RawRedis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password despite the docs: never print it.
        f.debug_struct("RawRedis")
            .field(
                "url",
                &self
                    .url
                    .as_deref()
                    .map(crate::ratelimit::redis::redacted_url),
            )
            .field(
                "cluster",
                &self.cluster.as_ref().map(|urls| {
                    urls.iter()
                        .map(|u| crate::ratelimit::redis::redacted_url(u))
                        .collect::<Vec<_>>()
                }),
            )
            .field("sentinel", &self.sentinel)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("key_prefix", &self.key_prefix)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

/// Where a Sentinel finds the master.
#[derive(Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRedisSentinel {
    /// The master's name in the sentinels' configuration (`sentinel monitor NAME …`).
    pub master: String,
    /// Sentinels to ask, `redis://host:port` or `rediss://host:port` (all alike; `rediss`
    /// also means TLS to the master). No credentials in the URLs.
    pub urls: Vec<String>,
    /// ACL user name on the sentinels, if they require one.
    #[serde(default)]
    pub username: Option<String>,
    /// The sentinels' password, if they require one (`requirepass` in sentinel.conf), from
    /// the environment or a file; never logged.
    #[serde(default)]
    pub password: Option<RawSecret>,
}

impl fmt::Debug for RawRedisSentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawRedisSentinel")
            .field("master", &self.master)
            .field(
                "urls",
                &self
                    .urls
                    .iter()
                    .map(|u| crate::ratelimit::redis::redacted_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(5)
}

fn default_redis_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_cool_down() -> Duration {
    Duration::from_secs(1)
}

fn default_redis_prefix() -> String {
    "portcullis:rl:".to_owned()
}

/// An external authorization service a rule can ask.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDelegate {
    /// Its ext_authz gRPC endpoint: `http://host:port` (h2c) or `https://host:port` (TLS,
    /// ALPN `h2`, the certificate checked against the host).
    pub grpc: String,
    /// PEM CA certificates an `https://` delegate's certificate must chain to, instead of the
    /// webpki roots: a private CA. Relative to the config file; watched.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Each call's deadline, connection included. Default 200ms.
    #[schemars(with = "String")]
    #[serde(
        default = "default_delegate_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub timeout: Duration,
    /// How long an answer is reused for the same rule and the same request as the delegate
    /// was told it: client address, method, host, path and query, scheme, every header sent
    /// (the credential among them), principal (never past the credential's expiry). 0
    /// disables. Default 30s.
    #[schemars(with = "String")]
    #[serde(
        default = "default_delegate_cache_ttl",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
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
