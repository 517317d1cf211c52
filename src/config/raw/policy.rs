//! Policy files: rules, their match, requirements, denial shape; where they are read from.

use super::*;

/// Where the policy files are.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    /// Directory of `*.yaml` (and `*.yml`) policy files, relative to the config file. Files
    /// are read in name order; rules are evaluated in that order, first match wins.
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
    /// Whether a reload may leave no rule at all (every request then denied). Off by default:
    /// an empty or truncated policy file, or a ConfigMap caught mid-update, is refused and the
    /// running rules stay.
    #[serde(default)]
    pub allow_empty: bool,
    /// What a rule's `when` expression may cost per request.
    #[serde(default)]
    pub conditions: RawConditionLimits,
}

impl Default for RawPolicies {
    fn default() -> Self {
        Self {
            dir: default_policy_dir(),
            allow_empty: false,
            conditions: RawConditionLimits::default(),
        }
    }
}

/// Run-time limits of `when` expressions with comprehensions (`all`, `exists`, `exists_one`,
/// `map`, `filter`); at compile, those nest at most two deep and an expression has at most
/// 1000 nodes. Over a limit, the evaluation stops and the rule denies with
/// `condition_budget_exceeded` (403).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawConditionLimits {
    /// Longest list or map a comprehension may range over (a token's roles, say).
    pub max_list_size: NonZeroU64,
    /// Steps one evaluation may take: a comprehension costs the length of its range times
    /// the size of its body (charged before it runs, as if it visited every element), and
    /// each list or map a comprehension body reads from the variables costs its length.
    /// Default 20000: at most about a millisecond of evaluation (`bench/policy.rs`,
    /// `cel_budget_spent`); an `exists` over 1000 roles costs about 12000.
    pub max_steps: NonZeroU64,
}

impl Default for RawConditionLimits {
    fn default() -> Self {
        Self {
            max_list_size: NonZeroU64::MIN.saturating_add(999),
            max_steps: NonZeroU64::MIN.saturating_add(19_999),
        }
    }
}

/// A policy file under `policies/`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyFile {
    /// Rules, evaluated in order; the first whose `match` fits the request decides. Required
    /// (`rules: []` for none): a file without it is taken for one being written.
    pub rules: Vec<RawRule>,
    /// The allow rules of this file match path literals in any ASCII case (`/ADMIN/x` meets
    /// the rule for `/admin/**`), for upstreams that serve `/ADMIN` as `/admin` (IIS,
    /// ASP.NET, Express by default). Deny rules always do.
    #[serde(default)]
    pub case_insensitive_paths: bool,
}

/// One route rule.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name, shown in logs, metrics and `explain`.
    pub name: String,
    /// Which requests the rule applies to; every listed criterion must hold.
    #[serde(rename = "match")]
    pub matches: RawMatch,
    /// `allow` or `deny`.
    pub effect: Effect,
    /// The upstream an allowed request is forwarded to (proxy door).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Authenticators this rule accepts, tried in order: the first that finds its credential
    /// decides, and an invalid credential is refused (401) rather than tried elsewhere.
    #[serde(default)]
    pub authenticators: Vec<String>,
    /// Let requests without any credential through as anonymous. With `authenticators`, a
    /// credential is optional but must be valid when present. An allow rule needs one of the
    /// two: there is no implicit anonymous access.
    #[serde(default)]
    pub anonymous: bool,
    /// What an allowed request must also satisfy; each failure is a 403 with its reason.
    #[serde(default)]
    pub require: RawRequire,
    /// A CEL expression the request must satisfy (allow rules): over `claims`, `principal`,
    /// `request`, `params` (named path parameters) and `action`; only `true` allows.
    #[serde(default)]
    pub when: Option<String>,
    /// Identity headers for this rule: added to, or replacing, the global ones; `null`
    /// removes a global one.
    #[serde(default)]
    pub identity_headers: BTreeMap<String, Option<String>>,
    /// A rate limit (from `rate_limits`) on the requests this rule allows.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// A brute-force guard (a limit with `count: failures`, usually keyed by `client_ip`):
    /// every request this rule refuses spends it, and once it is spent the rule answers 429
    /// before verifying any credential.
    #[serde(default)]
    pub guard: Option<String>,
    /// A delegate (from `delegates`) asked after the rule's requirements, `when` and rate
    /// limit (a throttled request is never asked about): only its OK allows.
    #[serde(default)]
    pub delegate: Option<String>,
    /// What this rule's denials look like: status, a login redirect for browsers, extra JSON.
    #[serde(default)]
    pub denial: Option<RawDenial>,
    /// Upstream timeouts for the requests this rule allows, overriding its upstream's.
    #[serde(default)]
    pub timeouts: Option<RawTimeouts>,
    /// HTTP/1.1 upgrades (WebSockets) this allow rule relays (proxy door). Without it, a
    /// client's `Upgrade` header is removed like any hop-by-hop header and the request goes
    /// upstream as a plain request: no tunnel is ever opened. `Upgrade: h2c` is always refused.
    #[serde(default)]
    pub upgrade: Option<RawUpgrade>,
    /// Re-decide a tunnel (WebSocket) this rule opened this often, against the current
    /// policy and with a fresh verification of its credential (introspection asked again,
    /// the delegate asked again, the token cache bypassed): a denial closes it. Whatever
    /// this says, a tunnel closes when its credential expires (JWT or introspection `exp`).
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub reauthorize_every: Option<Duration>,
    /// Cross-origin requests from browsers (CORS): the gateway answers the preflights of
    /// allowed origins itself, and adds the CORS headers to real responses.
    #[serde(default)]
    pub cors: Option<RawCors>,
}

/// Upstream timeouts of a rule; each one given replaces the upstream's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Time to connect (TCP and TLS) when a new connection is needed; 504 beyond it.
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub connect: Option<Duration>,
    /// Time from the end of the request body to the response head (and longest pause
    /// within the body); 504 beyond it.
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub response: Option<Duration>,
    /// Longest wait for the next piece of the response body; the response is cut beyond it.
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub idle: Option<Duration>,
}

/// The upgrades a rule relays, and the bounds of the tunnels they open.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpgrade {
    /// Protocols a client may ask for in `Upgrade`, case-insensitive: `websocket`. `h2c` is
    /// refused.
    pub protocols: Vec<String>,
    /// A tunnel with no byte in either direction for this long is closed.
    #[serde(
        default = "default_tunnel_idle",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub idle_timeout: Duration,
    /// A tunnel is closed this long after it opened, whatever it carries.
    #[serde(
        default = "default_tunnel_lifetime",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub max_lifetime: Duration,
}

fn default_tunnel_idle() -> Duration {
    Duration::from_secs(300)
}

fn default_tunnel_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Cross-origin resource sharing for a rule's routes.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    /// Origins allowed, exactly as browsers send them (`https://app.example.com`, scheme,
    /// host and port; no path). `*` is refused: the allowed origin is echoed, never a wildcard.
    pub allowed_origins: Vec<String>,
    /// Methods a preflight may ask for. Default: the rule's methods (GET, HEAD, POST when the
    /// rule names none).
    #[serde(default)]
    pub allowed_methods: Vec<String>,
    /// Request headers a preflight may ask for (`authorization`, `content-type`, …),
    /// case-insensitive.
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    /// Response headers a browser script may read (`Access-Control-Expose-Headers`).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies and `Authorization` from the
    /// browser).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer (`Access-Control-Max-Age`).
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub max_age: Option<Duration>,
}

/// The shape of a rule's denials. Without it: 401 with a challenge when a credential is
/// missing or invalid, 403 for policy denials, each with a short JSON body.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDenial {
    /// Replaces 403 for the rule's policy denials (a deny rule, an unmet requirement, a false
    /// `when`): a 4xx other than 401 and 407, e.g. 404 for a route that should look absent.
    /// The body then names the status (`not_found`), not the reason, and no
    /// `insufficient_scope` challenge is sent. A request without a valid credential still
    /// gets its 401 (or the login redirect).
    #[serde(default)]
    pub status: Option<u16>,
    /// Where a browser without a valid credential is sent instead of a 401: a `GET` or `HEAD`
    /// whose `Accept` names `text/html` gets a 302 to this URL, with the address it asked
    /// for in `return_param`. Absolute `http(s)` URL or a path starting with `/`. The return
    /// address carries the request's host: on a rule without `hosts`, the login service must
    /// check it against its allowed domains before sending anyone back.
    #[serde(default)]
    pub login_url: Option<String>,
    /// The query parameter of `login_url` that carries the return address. Default `rd`.
    #[serde(default)]
    pub return_param: Option<String>,
    /// Extra members of the JSON body every denial of this rule carries, after `error` and
    /// `request_id` (which it cannot replace): e.g. a help message or a documentation link.
    #[serde(default)]
    pub body: BTreeMap<String, serde_json::Value>,
}

/// Requirements of an allow rule beyond a valid credential.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    /// Scopes the principal must hold (403 `insufficient_scope` otherwise).
    #[serde(default)]
    pub scopes: Option<RawStringSet>,
    /// Roles the principal must hold.
    #[serde(default)]
    pub roles: Option<RawStringSet>,
    /// Claims (dotted paths) and what they must be.
    #[serde(default)]
    pub claims: BTreeMap<String, RawClaimCheck>,
    /// `user` or `machine`.
    #[serde(default)]
    pub kind: Option<RawPrincipalKind>,
    /// Client addresses allowed (the client address as derived through `trusted_proxies`).
    #[serde(default)]
    pub networks: Vec<Network>,
    /// A verified client certificate is required (the listener asks for one).
    #[serde(default)]
    pub mtls: bool,
}

/// Strings that must all, or at least one of which must, be held.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStringSet {
    /// Every one of these.
    #[serde(default)]
    pub all_of: Vec<String>,
    /// At least one of these.
    #[serde(default)]
    pub any_of: Vec<String>,
}

/// A check of one claim.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawClaimCheck {
    /// Equal to this JSON value (`"acme"`, `2`, `true`).
    Equals(serde_json::Value),
    /// Equal to one of these.
    OneOf(Vec<serde_json::Value>),
    /// An array claim holding this value, or a space-separated string holding this word.
    Contains(serde_json::Value),
}

/// Request criteria of a rule. An empty list matches everything.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Host names, case-insensitive, never with a port (refused: the client writes it);
    /// `*.example.com` stands for one label in an allow rule, one or more in a deny rule.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Canonical paths: exact `/a/b`, prefix `/api/**`, one segment `*`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods, upper case.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Envoy's `context_extensions` (set per route or virtual host in Envoy's
    /// `ExtAuthzPerRoute.check_settings`), each name with this exact value: the rule matches
    /// only Checks at the `envoy_grpc` door that carry them all. No other door has them, so
    /// such a rule never matches there.
    #[serde(default)]
    pub context_extensions: BTreeMap<String, String>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Refuse it with 403.
    Deny,
}

fn default_policy_dir() -> PathBuf {
    PathBuf::from("policies")
}
