//! Authenticators and their credential sources, keys, secrets and principal mapping.

use super::*;

// === authentication ===

/// Settings shared by every authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthn {
    /// Realm named in `WWW-Authenticate` challenges.
    pub realm: String,
    /// The verified-token cache.
    pub cache: RawTokenCache,
}

impl Default for RawAuthn {
    fn default() -> Self {
        Self {
            realm: "portcullis".to_owned(),
            cache: RawTokenCache::default(),
        }
    }
}

/// The verified-token cache: verifications are remembered under a seeded hash of the token (the
/// token kept beside, for a constant-time comparison on each hit), for at most the token's
/// lifetime and `revalidate_after`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokenCache {
    /// Most entries kept, over every authenticator (those that cache share it evenly); 0
    /// turns the cache off.
    pub max_entries: u64,
    /// Most memory the entries may take, in bytes, over every authenticator (those that
    /// cache share it evenly): estimated per entry (the token, the principal and its claims,
    /// the cache's bookkeeping), within 20% of what they really take.
    pub max_bytes: u64,
    /// A cached verification is redone after this long, even if the token is still valid.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub revalidate_after: Duration,
}

impl Default for RawTokenCache {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            revalidate_after: Duration::from_secs(300),
        }
    }
}

/// One authenticator: how a credential is found and verified.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawAuthenticator {
    /// JSON Web Tokens from one or more issuers.
    Jwt(RawJwt),
    /// API keys, stored as hashes.
    ApiKey(RawApiKeyAuth),
    /// Opaque tokens checked by OAuth 2.0 token introspection (RFC 7662).
    Introspection(Box<RawIntrospection>),
    /// Identity headers set by an inner proxy that already authenticated the caller.
    TrustedHeaders(RawTrustedHeaders),
    /// A client certificate verified during the TLS handshake.
    Mtls(RawMtls),
}

/// Where a credential is looked for.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawCredentialSource {
    /// `Authorization: Bearer <token>` (scheme case-insensitive).
    Bearer,
    /// A named request header holding the bare token.
    Header(String),
    /// A named cookie.
    Cookie(String),
    /// A named query parameter (removed before forwarding). Tokens in URLs end up in logs and
    /// browser history: use only where nothing else works.
    Query(String),
}

/// A JWT authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Where the token is looked for; default `[bearer]`. Tokens found in several places must be
    /// identical.
    #[serde(default = "default_sources")]
    pub from: Vec<RawCredentialSource>,
    /// Remove the verified credential from the request before it goes upstream (the
    /// default: what was verified here is not replayed to services that need not see it).
    /// `false` forwards it, for upstreams that read the token themselves.
    #[serde(default = "default_true")]
    pub strip: bool,
    /// Longest token accepted, in bytes; longer ones are refused unparsed.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Trusted issuers; a token is checked only against the provider named by its `iss`.
    pub providers: Vec<RawProvider>,
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Accepted audiences; a token's `aud` (string or array) must name at least one. Required.
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer (default: whatever each key allows).
    #[serde(default)]
    pub algorithms: Vec<RawAlgorithm>,
    /// Where the verification keys come from.
    pub keys: Vec<RawKey>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`.
    #[serde(
        default = "default_leeway",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Refuse tokens without `exp`. Default true.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Refuse tokens whose lifetime (`exp - iat`, and `exp - now`) exceeds this. Whatever it
    /// says, `exp`, `nbf` and `iat` after the year 9999 are refused.
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub max_lifetime: Option<Duration>,
    /// Accepted token types (the header's `typ`), say `[at+jwt]` for RFC 9068 access tokens,
    /// so that ID tokens (`JWT`) of the same issuer and audience are refused. Compared
    /// case-insensitively, `application/at+jwt` being `at+jwt`; a token without `typ` is
    /// refused. Default: any type, or none.
    #[serde(default)]
    pub token_types: Vec<String>,
    /// Claims that must be present, with their JSON type.
    #[serde(default)]
    pub required_claims: BTreeMap<String, ClaimType>,
    /// How the principal is read from the claims.
    #[serde(default)]
    pub principal: RawPrincipalMapping,
    /// Fetching remote keys (JWKS URL, OIDC discovery).
    #[serde(default)]
    pub fetch: RawFetch,
}

/// A JWS algorithm. `none` does not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum RawAlgorithm {
    /// HMAC SHA-256.
    HS256,
    /// HMAC SHA-384.
    HS384,
    /// HMAC SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 SHA-512.
    RS512,
    /// RSASSA-PSS SHA-256.
    PS256,
    /// RSASSA-PSS SHA-384.
    PS384,
    /// RSASSA-PSS SHA-512.
    PS512,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// JSON type of a required claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimType {
    /// Any JSON value.
    Any,
    /// A string.
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An array.
    Array,
    /// An object.
    Object,
    /// A string or an array of strings.
    StringOrArray,
}

/// A verification key source.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawKey {
    /// A public key (or certificate) written in the config.
    Pem(RawPemText),
    /// A PEM file: public key (SPKI or PKCS#1) or certificate.
    PemFile(RawPemFile),
    /// One JWK written in the config, as JSON text.
    Jwk(RawJwkText),
    /// A JWKS file, watched and reloaded on change.
    JwksFile(RawJwksFile),
    /// A JWKS URL, fetched at startup and refreshed in the background.
    JwksUrl(RawJwksUrl),
    /// OIDC discovery: `<url>/.well-known/openid-configuration` names the `jwks_uri`; its
    /// `issuer` must equal the provider's.
    OidcDiscovery(RawJwksUrl),
    /// A shared HMAC secret, from the environment or a file (never inline).
    Hmac(RawHmacKey),
}

/// An inline PEM key.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPemText {
    /// The PEM text.
    pub text: String,
    /// Key id matched against the token's `kid`; a key without one is tried for tokens
    /// without `kid` (and those whose `kid` names no key), a key with one only for tokens
    /// naming it.
    #[serde(default)]
    pub kid: Option<String>,
    /// Algorithms this key verifies; they must fit the key type.
    pub algorithms: Vec<RawAlgorithm>,
}

/// A PEM key file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPemFile {
    /// The file (relative to the config file).
    pub path: PathBuf,
    /// Key id matched against the token's `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// Algorithms this key verifies; they must fit the key type.
    pub algorithms: Vec<RawAlgorithm>,
}

/// An inline JWK.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwkText {
    /// The JWK as JSON.
    pub text: String,
}

/// A JWKS file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwksFile {
    /// The file (relative to the config file).
    pub path: PathBuf,
}

/// A remote key source.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwksUrl {
    /// `https://…`; `http://` only for loopback addresses.
    pub url: String,
    /// PEM file of CA certificates trusted for this server (instead of the public roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `/readyz` does not wait for this source beyond `fetch.startup_timeout`. Without it the
    /// gateway is not ready until the first successful fetch. Either way, until then a token
    /// that only this source's keys could verify gets 503 (`authentication_unavailable`),
    /// never 401: a static key of the same provider does not stand in for keys never seen.
    #[serde(default)]
    pub optional: bool,
}

/// An HMAC key.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHmacKey {
    /// Where the secret is read from. At least as many bytes as the hash output (32 for HS256).
    pub secret: RawSecret,
    /// Key id matched against the token's `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// HS256, HS384 and/or HS512.
    pub algorithms: Vec<RawAlgorithm>,
}

/// Where a secret comes from; secrets are never written in the config itself.
#[derive(Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawSecret {
    /// An environment variable.
    Env(String),
    /// A file (relative to the config file); one trailing newline is dropped.
    File(PathBuf),
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only names a place, never a value; still, keep Debug boring.
        match self {
            Self::Env(n) => write!(f, "Env({n})"),
            Self::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// How a principal is read from verified claims.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrincipalMapping {
    /// Claim holding the principal id (default `sub`); machine tokens without it fall back to
    /// `client_id`, then `azp`.
    pub id_claim: String,
    /// Claim (dotted path, e.g. `realm_access.roles`) holding roles: a string or an array.
    pub roles_claim: Option<String>,
    /// Claim (dotted path) holding the tenant.
    pub tenant_claim: Option<String>,
    /// Claims holding scopes, a space-separated string or an array; the first present wins.
    pub scope_claims: Vec<String>,
    /// When a token is a machine (service client) rather than a user; any rule that holds
    /// decides. Default: `[client_id_without_sub]`.
    pub machine_when: Vec<RawMachineRule>,
}

impl Default for RawPrincipalMapping {
    fn default() -> Self {
        Self {
            id_claim: "sub".to_owned(),
            roles_claim: None,
            tenant_claim: None,
            scope_claims: vec!["scope".to_owned(), "scp".to_owned()],
            machine_when: vec![RawMachineRule::ClientIdWithoutSub],
        }
    }
}

/// A rule classifying a token as a machine principal.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawMachineRule {
    /// The token has `client_id` (or `azp`) but neither `sub` nor `username` (RFC 7662's
    /// resource owner: a user's token).
    ClientIdWithoutSub,
    /// A claim (dotted path) is present.
    ClaimPresent(String),
    /// A claim (dotted path) equals a string, e.g. `gty: client-credentials`.
    ClaimEquals(RawClaimEquals),
}

/// A claim compared with a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClaimEquals {
    /// Dotted claim path.
    pub claim: String,
    /// The value.
    pub value: String,
}

/// Fetching remote keys.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawFetch {
    /// Time for one fetch, connection included.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub timeout: Duration,
    /// Largest response accepted, in bytes.
    pub max_bytes: usize,
    /// Refresh interval when the server sends no `Cache-Control: max-age`.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub refresh: Duration,
    /// Lower bound on the refresh interval, whatever `Cache-Control` says.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub min_refresh: Duration,
    /// Upper bound on the refresh interval.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub max_refresh: Duration,
    /// Retry interval after a failed fetch.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub retry: Duration,
    /// A token with an unknown `kid` triggers at most one refetch per this interval.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub unknown_kid_cooldown: Duration,
    /// How long `/readyz` waits for the keys of an `optional` remote source; a source not
    /// marked optional keeps the gateway not ready until its first successful fetch.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub startup_timeout: Duration,
}

impl Default for RawFetch {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_bytes: 512 * 1024,
            refresh: Duration::from_secs(600),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(86_400),
            retry: Duration::from_secs(10),
            unknown_kid_cooldown: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(10),
        }
    }
}

fn default_sources() -> Vec<RawCredentialSource> {
    vec![RawCredentialSource::Bearer]
}

fn default_max_token_bytes() -> usize {
    8 * 1024
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// An API key authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeyAuth {
    /// Where the key is looked for; default `[header: x-api-key]`.
    #[serde(default = "default_api_key_sources")]
    pub from: Vec<RawCredentialSource>,
    /// Remove the verified credential from the request before it goes upstream (the
    /// default: what was verified here is not replayed to services that need not see it).
    /// `false` forwards it, for upstreams that read the token themselves.
    #[serde(default = "default_true")]
    pub strip: bool,
    /// A YAML file of hashed keys (`keys: [...]`, as `portcullis apikey new` prints them),
    /// watched and reloaded on change.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// Keys written in the config: with a `hash`, or a shared `secret` read from the
    /// environment or a file (a fixed user id and key id for one shared secret).
    #[serde(default)]
    pub keys: Vec<RawApiKey>,
}

/// The contents of an API key file: `keys:` and a list of entries, or the list alone, so that
/// `portcullis apikey new … >> apikeys.yaml` makes a valid file whether it existed or not.
#[derive(Debug, Clone, PartialEq, Default, JsonSchema)]
pub struct RawApiKeyFile {
    /// The keys.
    pub keys: Vec<RawApiKey>,
}

impl<'de> Deserialize<'de> for RawApiKeyFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = RawApiKeyFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of keys, or a mapping with `keys:`")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawApiKeyFile::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element()? {
                    keys.push(k);
                }
                Ok(RawApiKeyFile { keys })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys: Option<Vec<RawApiKey>> = None;
                while let Some(name) = map.next_key::<String>()? {
                    match name.as_str() {
                        "keys" if keys.is_some() => return Err(A::Error::duplicate_field("keys")),
                        "keys" => {
                            keys = Some(
                                map.next_value::<Option<Vec<RawApiKey>>>()?
                                    .unwrap_or_default(),
                            )
                        }
                        other => return Err(A::Error::unknown_field(other, &["keys"])),
                    }
                }
                Ok(RawApiKeyFile {
                    keys: keys.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(Keys)
    }
}

/// One API key and what it grants.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// The key's id (public; shown in logs and identity headers).
    pub id: String,
    /// `sha256:<64 hex digits>` of the whole key. Exactly one of `hash` and `secret`.
    #[serde(default)]
    pub hash: Option<String>,
    /// The key itself, from the environment or a file (config only, never in a key file).
    #[serde(default)]
    pub secret: Option<RawSecret>,
    /// The principal id the key speaks for.
    pub owner: String,
    /// `user` (default) or `machine`.
    #[serde(default)]
    pub kind: RawPrincipalKind,
    /// Scopes granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles granted.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Plan or tier (for rate limits and identity headers).
    #[serde(default)]
    pub plan: Option<String>,
    /// Tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// RFC 3339 time after which the key is refused, e.g. `2027-06-30T00:00:00Z`.
    #[serde(default)]
    pub expires: Option<String>,
    /// A disabled key is refused. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The kind of a principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawPrincipalKind {
    /// A person.
    #[default]
    User,
    /// A service client.
    Machine,
}

/// An OAuth 2.0 token introspection authenticator (RFC 7662).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// Where the token is looked for; default `[bearer]`.
    #[serde(default = "default_sources")]
    pub from: Vec<RawCredentialSource>,
    /// Remove the verified credential from the request before it goes upstream (the
    /// default: what was verified here is not replayed to services that need not see it).
    /// `false` forwards it, for upstreams that read the token themselves.
    #[serde(default = "default_true")]
    pub strip: bool,
    /// Longest token accepted, in bytes; longer ones are refused without a call.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// The introspection endpoint: `https://…` (`http://` only to loopback).
    pub endpoint: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// Its client secret, from the environment or a file.
    pub client_secret: RawSecret,
    /// How the client authenticates: `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub client_auth: RawClientAuthMethod,
    /// Sent as `token_type_hint` when set (e.g. `access_token`).
    #[serde(default)]
    pub token_type_hint: Option<String>,
    /// When set, the response's `iss` must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, the response's `aud` (string or array) must name one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `token_type` (and `token_use`) values when the server sends one; default
    /// `[access_token, Bearer]`, so a refresh token some servers call active is refused.
    #[serde(default = "default_token_types")]
    pub token_types: Vec<String>,
    /// Most introspection calls for requests in flight at once; beyond it requests get 503
    /// at once rather than piling up on the authorization server. Re-checks of open streams
    /// (`reauthorize_every`) have as many slots of their own, and wait for one.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Most of those calls made for one client address (IPv6 by /64) at once: made-up tokens
    /// from one client cannot fill `max_in_flight` and get everyone else 503. Beyond it, that
    /// client's requests needing a call get 503.
    #[serde(default = "default_max_in_flight_per_client")]
    pub max_in_flight_per_client: usize,
    /// How the principal is read from the response.
    #[serde(default)]
    pub principal: RawPrincipalMapping,
    /// Time for one introspection call, connection included.
    #[serde(
        default = "default_introspection_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Largest response accepted, in bytes.
    #[serde(default = "default_introspection_max_bytes")]
    pub max_bytes: usize,
    /// An active result is reused for at most this long (and never past the token's `exp`).
    #[serde(
        default = "default_introspection_cache_ttl",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
    /// Clock skew tolerated for an active answer's `nbf` (default 30 s, as for JWTs): the
    /// server's own clock said active.
    #[serde(
        default = "default_leeway",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// An inactive result is reused for this long (at most `cache_ttl`), sparing the server
    /// repeated bad tokens.
    #[serde(
        default = "default_introspection_inactive_ttl",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub inactive_ttl: Duration,
    /// PEM file of CA certificates trusted for the server (instead of the public roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How the gateway authenticates to the introspection endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawClientAuthMethod {
    /// HTTP Basic with the form-encoded id and secret (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// Identity headers from an inner proxy that already authenticated the caller.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedHeaders {
    /// Peers whose headers are believed, by the address the door vouches for (never an
    /// address a client wrote): at the proxy door the TCP source; at the Envoy HTTP and
    /// forward-auth doors the address the door's peer received the request from (the last
    /// `X-Forwarded-For` entry, which the peer must set itself, as the shipped examples do);
    /// at the gRPC door the source address Envoy reports.
    pub networks: Vec<Network>,
    /// Header carrying the principal id; its presence is the credential.
    pub id: String,
    /// Header with the kind (`user` or `machine`); default: every principal is `kind`.
    #[serde(default)]
    pub kind_header: Option<String>,
    /// The kind when there is no `kind_header`.
    #[serde(default)]
    pub kind: RawPrincipalKind,
    /// Header with scopes, separated by spaces or commas.
    #[serde(default)]
    pub scopes: Option<String>,
    /// Header with roles, separated by spaces or commas.
    #[serde(default)]
    pub roles: Option<String>,
    /// Header with the tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// More headers read into claims: claim name → header name.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// A client certificate authenticator (the listener must ask for client certificates).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    /// Which name in the certificate is the principal id, first present wins; default
    /// `[san_uri, san_dns, subject_cn]`.
    #[serde(default = "default_cert_ids")]
    pub id: Vec<RawCertName>,
    /// The kind of principal; default `machine`.
    #[serde(default = "machine")]
    pub kind: RawPrincipalKind,
    /// Listeners whose client certificates count (each needs `tls.client_auth`); default: every
    /// listener that asks for one. Name them when listeners trust different CAs, so a
    /// partner CA's certificate never passes for an internal one.
    #[serde(default)]
    pub listeners: Vec<String>,
}

/// A name in a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawCertName {
    /// The first URI subject alternative name (SPIFFE ids).
    SanUri,
    /// The first DNS subject alternative name.
    SanDns,
    /// The first email subject alternative name.
    SanEmail,
    /// The subject's common name.
    SubjectCn,
}

fn default_api_key_sources() -> Vec<RawCredentialSource> {
    vec![RawCredentialSource::Header("x-api-key".to_owned())]
}

fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_introspection_max_bytes() -> usize {
    64 * 1024
}

fn default_introspection_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_introspection_inactive_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_token_types() -> Vec<String> {
    vec!["access_token".to_owned(), "Bearer".to_owned()]
}

fn default_max_in_flight() -> usize {
    64
}

fn default_max_in_flight_per_client() -> usize {
    16
}

fn default_cert_ids() -> Vec<RawCertName> {
    vec![
        RawCertName::SanUri,
        RawCertName::SanDns,
        RawCertName::SubjectCn,
    ]
}

fn machine() -> RawPrincipalKind {
    RawPrincipalKind::Machine
}
